"""HTTP/1.x request heads on raw bytes: the host a client asks for.

Origin-form takes the Host header; absolute-form (`GET http://h/ ...`, proxies) and
CONNECT (`CONNECT h:443`) name the host in the request line. Ports and case are dropped:
`Dl.Kaspersky.com:80` is `dl.kaspersky.com`.
"""

from __future__ import annotations

OK, NEED_MORE, NOT_HTTP = "ok", "need_more", "not_http"
METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ")
MAX_HEAD = 8192


def looks_like_request(data: bytes) -> bool:
    return data.startswith(METHODS)


def _host_only(value: bytes) -> str | None:
    value = value.strip()
    if value.startswith(b"["):  # [v6]:port
        end = value.find(b"]")
        return value[1:end].decode("ascii", "replace").lower() if end > 0 else None
    host = value.split(b":", 1)[0].strip().rstrip(b".")
    if not host:
        return None
    return host.decode("ascii", "replace").lower()


def parse_request(data: bytes) -> tuple[str, str | None, str]:
    """(status, host, method). status NEED_MORE until the head or the Host line is in."""
    if not looks_like_request(data):
        # A prefix of a method could still become one.
        if len(data) < 8 and any(m.startswith(data) for m in METHODS):
            return NEED_MORE, None, ""
        return NOT_HTTP, None, ""
    line_end = data.find(b"\r\n")
    if line_end < 0:
        line_end = data.find(b"\n")
    if line_end < 0:
        return (NEED_MORE if len(data) < MAX_HEAD else NOT_HTTP), None, ""
    parts = data[:line_end].split(b" ")
    method = parts[0].decode("ascii")
    target = parts[1] if len(parts) > 1 else b""
    if method == "CONNECT":
        return OK, _host_only(target), method
    lowered = target[:8].lower()
    if lowered.startswith((b"http://", b"https://")):
        rest = target.split(b"://", 1)[1]
        authority = rest.split(b"/", 1)[0].split(b"?", 1)[0]
        authority = authority.rsplit(b"@", 1)[-1]
        return OK, _host_only(authority), method
    head_end = data.find(b"\r\n\r\n")
    head = data if head_end < 0 else data[:head_end]
    for line in head.split(b"\n")[1:]:
        if line[:5].lower() == b"host:":
            return OK, _host_only(line[5:]), method
    if head_end < 0 and len(data) < MAX_HEAD:
        return NEED_MORE, None, method
    return OK, None, method
