"""`netblock inspect`: run the packet inspector, replay a capture, or print static nft rules."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from netblock.config import load_config
from netblock.yamlsrc import SourceError


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("inspect", help="packet inspector: server names, foreign DNS, DoT/DoH, vendor networks")
    p.add_argument("-c", "--config", required=True, help="netblock configuration file")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--interface", "-i", help="capture on this interface (default: inspector.interface)")
    source.add_argument("--pcap", help="replay a pcap or pcapng file (offline; no enforcement)")
    p.add_argument(
        "--enforce",
        action="append",
        default=None,
        metavar="MODE",
        help="rst, nft, nfqueue (repeat or comma-separate; default: inspector.enforce)",
    )
    p.add_argument("--queue-num", type=int, default=0, help="NFQUEUE number for --enforce nfqueue")
    p.add_argument("--no-rules", action="store_true", help="nfqueue: do not install the iptables rules")
    p.add_argument("--nft-timeout", type=int, default=300, help="seconds a blocked pair/flow stays in the nft sets")
    p.add_argument("--print-nft", action="store_true", help="print static nftables rules and exit")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run until signalled)")
    p.add_argument("--ready-file", help="write this file once capturing")
    p.add_argument("--json", action="store_true", help="--pcap: print each detection as a JSON line")
    p.set_defaults(func=run)


def _modes(args: argparse.Namespace, configured: tuple[str, ...]) -> tuple[str, ...]:
    from netblock.inspect.runner import ENFORCE_MODES

    raw = args.enforce if args.enforce is not None else list(configured)
    modes = tuple(dict.fromkeys(m.strip() for item in raw for m in item.split(",") if m.strip()))
    for mode in modes:
        if mode not in ENFORCE_MODES:
            raise ValueError(f"--enforce: unknown mode {mode!r} (known: {', '.join(ENFORCE_MODES)})")
    return modes


def run(args: argparse.Namespace) -> int:
    log = logging.getLogger("netblock.inspect")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        modes = _modes(args, config.inspector.enforce)
        from netblock.inspect.runner import Inspector, describe, load

        if args.print_nft:
            from netblock.inspect.nft import static_ruleset

            loaded = load(config)
            resolvers = [str(__import__("ipaddress").ip_address(a)) for a in loaded.resolvers]
            doh = [e.name for lst in loaded.doh.lists for e in lst.networks] if loaded.doh else []
            blocked = [
                e.name
                for lst in loaded.policy.lists
                if lst.action == "block"
                for e in lst.networks
                if lst.name != loaded.doh_name
            ]
            sys.stdout.write(static_ruleset(sorted(resolvers), doh, blocked))
            return 0
        if args.pcap:
            if modes:
                log.warning("--pcap is offline: enforcement (%s) is ignored", ",".join(modes))
            inspector = Inspector(config, (), keep=100_000 if args.json else 0)
            summary = inspector.run_pcap(args.pcap)
            if args.json:
                for det in inspector.sink.recent:
                    print(json.dumps(describe(det)))
            print(json.dumps({"summary": summary}))
            return 0
        interface = args.interface or config.inspector.interface
        inspector = Inspector(config, modes, nft_timeout=args.nft_timeout)
        signal.signal(signal.SIGTERM, lambda *_: inspector.stop())
        signal.signal(signal.SIGINT, lambda *_: inspector.stop())
        signal.signal(signal.SIGHUP, lambda *_: inspector.reload_in_background())
        ready = Path(args.ready_file) if args.ready_file else None
        if "nfqueue" in modes:
            summary = inspector.run_nfqueue(
                args.queue_num, interface or "", ready, args.duration, rules=not args.no_rules
            )
        else:
            if not interface:
                raise ValueError("no interface: give --interface or inspector.interface (or --pcap FILE)")
            summary = inspector.run_live(interface, ready, args.duration)
        print(json.dumps({"summary": summary}), flush=True)
        return 0
    except SourceError as exc:
        print(f"netblock inspect: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(
            f"netblock inspect: {exc}: live capture and enforcement need root (or CAP_NET_RAW and CAP_NET_ADMIN)",
            file=sys.stderr,
        )
        return 1
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"netblock inspect: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m netblock.inspect.cli`), same arguments as `netblock inspect`."""
    parser = argparse.ArgumentParser(prog="netblock")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
