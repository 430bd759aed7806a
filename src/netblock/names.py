"""Domain names: normalising what operators write, and the wire form lookups use."""

from __future__ import annotations

import re

_LABEL = re.compile(rb"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")
_PLAIN = re.compile(rb"[A-Za-z0-9_-]*")  # labels that need no escaping
_HOST_OCTETS = b"-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"  # _PLAIN's, and the dot


class NameError_(ValueError):
    """A domain name an operator wrote that cannot be a DNS name."""


def normalise(name: str) -> str:
    """Lower-case, strip one trailing dot, IDN to punycode; raise NameError_ if invalid."""
    text = name.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise NameError_("empty name")
    if any(ord(c) > 127 for c in text):
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise NameError_(f"{name!r}: not a valid international name ({exc})") from None
    text = text.lower()
    if len(text) > 253:
        raise NameError_(f"{name!r}: longer than 253 characters")
    for label in text.split("."):
        if not label:
            raise NameError_(f"{name!r}: empty label")
        if len(label) > 63:
            raise NameError_(f"{name!r}: label longer than 63 characters")
        if not _LABEL.match(label.encode()):
            raise NameError_(f"{name!r}: label {label!r} has characters a host name cannot have")
    return text


def to_wire(name: str) -> bytes:
    """'a.b' -> b'\\x01a\\x01b\\x00' (already normalised names only)."""
    if not name:
        return b"\x00"
    return b"".join(bytes((len(label),)) + label.encode("ascii") for label in name.split(".")) + b"\x00"


def from_wire(wire: bytes) -> str:
    """Presentation form of an uncompressed wire name; dots and odd bytes inside a label
    are escaped (RFC 1035 \\. and \\DDD), so a one-label 'weixin.qq.com' never reads as
    the three-label name."""
    dotted = bytearray(wire)  # each length octet becomes the dot before its label
    labels = end = 0
    try:
        while length := wire[end]:
            dotted[end] = 0x2E
            end += 1 + length
            labels += 1
    except IndexError:  # no root label: the name ends with the bytes
        pass
    if not labels:
        return "."
    text = dotted[1:end]
    # A host name, as nearly every name is: only letters, digits, - and _, and no dot but the
    # ones put there. Checked in place: cheaper than a list of labels and two joins.
    if text.count(b".") < labels and not text.translate(None, _HOST_OCTETS):
        return text.decode("ascii") + "."
    return ".".join(raw.decode("ascii") if _PLAIN.fullmatch(raw) else escape_label(raw)
                    for raw in wire_labels(wire)) + "."


def wire_labels(wire: bytes) -> list[bytes]:
    """The labels of an uncompressed wire name, up to the root label or the end of the bytes."""
    labels = []
    i = 0
    while length := wire[i] if i < len(wire) else 0:
        labels.append(wire[i + 1 : i + 1 + length])
        i += 1 + length
    return labels


def escape_label(raw: bytes) -> str:
    out = []
    for byte in raw:
        if byte in (0x2E, 0x5C, 0x22, 0x28, 0x29, 0x3B, 0x40, 0x24):  # . \ " ( ) ; @ $
            out.append("\\" + chr(byte))
        elif 0x21 <= byte <= 0x7E:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return "".join(out)


def is_under(name: str, parent: str) -> bool:
    """True if name equals parent or lies below it, on label boundaries."""
    return name == parent or name.endswith("." + parent)
