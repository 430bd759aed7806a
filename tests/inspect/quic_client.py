"""A QUIC client for inspector tests: exit 0 when the handshake completes, 1 otherwise.

--big-hello adds enough ALPN protocols that the ClientHello spans two Initial packets.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicProtocolVersion


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", choices=["v1", "v2"], default="v1")
    parser.add_argument("--timeout", type=float, default=4.0)
    parser.add_argument("--big-hello", action="store_true")
    args = parser.parse_args()
    alpn = ["hq-interop", "h3"]
    if args.big_hello:
        alpn += [f"x-netblock-test-protocol-{i:03d}" for i in range(45)]
    config = QuicConfiguration(is_client=True, alpn_protocols=alpn, server_name=args.name, verify_mode=0)
    version = QuicProtocolVersion.VERSION_2 if args.version == "v2" else QuicProtocolVersion.VERSION_1
    config.original_version = version
    config.supported_versions = [version]
    config.idle_timeout = args.timeout
    try:
        async with asyncio.timeout(args.timeout):
            async with connect(args.host, 443, configuration=config) as client:
                await client.ping()
    except (TimeoutError, ConnectionError, OSError) as exc:
        print(f"quic: failed: {exc!r}", file=sys.stderr)
        return 1
    print("quic: connected")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
