"""A minimal aioquic server for inspector tests: completes handshakes (QUIC v1 and v2)."""

from __future__ import annotations

import argparse
import asyncio

from aioquic.asyncio import serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicProtocolVersion


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, default=443)
    args = parser.parse_args()
    config = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop", "h3", "test"])
    config.supported_versions = [QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2]
    config.load_cert_chain(args.cert, args.key)
    await serve("::", args.port, configuration=config)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
