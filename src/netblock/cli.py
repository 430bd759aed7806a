"""The `netblock` command: serve | check | lint | report | events | inspect | import | version."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ipaddress
import json
import sys
import time
from collections.abc import Sequence

from netblock import __version__
from netblock.config import Config, load_config
from netblock.yamlsrc import SourceError

DEFAULT_CONFIG = "config/netblock.yaml"

# Modules that add their own subcommands with add_commands(subparsers).
COMMAND_MODULES = ("netblock.lint", "netblock.report", "netblock.inspect.cli", "netblock.policy.importers")


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except SourceError as exc:
        raise SystemExit(f"netblock: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from netblock.dns.server import DnsServer
    from netblock.dns.upstream import UpstreamError
    from netblock.logs import setup_logging

    config = _load(args.config)
    setup_logging(config.logging)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        server = DnsServer(config)
    except UpstreamError as exc:
        raise SystemExit(f"netblock: {exc}") from None
    return asyncio.run(_serve(server, config))


async def _serve(server: object, config: Config) -> int:
    from netblock.dns.server import DnsServer

    assert isinstance(server, DnsServer)
    try:
        await server.start()
    except SourceError as exc:
        errors = server.holder.last_error or str(exc)
        print(f"netblock: refusing to serve without a valid policy: {errors}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"netblock: {exc.strerror or exc}", file=sys.stderr)
        return 1
    metrics = None
    if config.metrics.enabled:
        from netblock.metrics import MetricsServer

        try:
            metrics = MetricsServer(config, server)
            metrics.start()
        except (OSError, SourceError) as exc:  # a taken port, a broken web-config file
            print(f"netblock: metrics: {exc}", file=sys.stderr)
            await server.stop()
            return 1
    assert server.stopping is not None
    await server.stopping.wait()
    if metrics is not None:
        metrics.stop()
    await server.stop()
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Explain the decision for a name (and a client)."""
    from netblock.dns.admit import Admission
    from netblock.names import NameError_, normalise
    from netblock.policy.reload import build_policy

    config = _load(args.config)
    policy, errors = build_policy(config)
    if policy is None:
        for error in errors:
            print(error, file=sys.stderr)
        return 1
    try:
        name = normalise(args.name)
    except NameError_ as exc:
        print(f"netblock: {exc}", file=sys.stderr)
        return 2
    rule = policy.match_name(name)
    decision = {"allow": "allowed", "block": "blocked", "monitor": "monitored"}[rule.action] if rule else "allowed"
    result: dict[str, object] = {"name": name, "type": args.type.upper(), "decision": decision}
    if rule is not None:
        result.update({
            "list": rule.list_name, "vendor": rule.vendor, "rule": rule.pattern, "match": rule.kind,
            "origin": rule.origin, "response": rule.response.mode if rule.action == "block" else None,
            "policy": {"id": rule.policy.id, "title": rule.policy.title, "url": rule.policy.url},
        })
        if rule.action == "allow":
            result["note"] = "carve-out: forwarded upstream even though a parent may be blocked"
    if args.client:
        try:
            ipaddress.ip_address(args.client)
        except ValueError:
            print(f"netblock: --client: not an IP address: {args.client!r}", file=sys.stderr)
            return 2
        refusal = Admission(config.access).check(args.client, time.monotonic())
        result["client"] = {"ip": args.client, "admitted": not refusal, "refused_by": refusal or None}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{name} {args.type.upper()}: {decision}")
    if rule is not None:
        print(f"  list:   {rule.list_name} ({rule.vendor})" if rule.vendor else f"  list:   {rule.list_name}")
        print(f"  rule:   {rule.pattern} [{rule.kind}] at {rule.origin}")
        if rule.action == "block":
            print(f"  answer: {rule.response.mode}")
        if rule.policy.id or rule.policy.title:
            print(f"  policy: {rule.policy.id} {rule.policy.title}".rstrip())
        if rule.policy.url:
            print(f"          {rule.policy.url}")
    else:
        print("  no list matches: forwarded upstream")
    if args.client:
        client = result["client"]
        assert isinstance(client, dict)
        print(f"  client: {args.client} " + ("admitted" if client["admitted"] else f"refused ({client['refused_by']})"))
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"netblock {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="netblock", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the DNS forwarder")
    serve.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="explain the decision for a name")
    check.add_argument("name")
    check.add_argument("--type", default="A", help="query type (default A)")
    check.add_argument("--client", help="client IP address")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    check.set_defaults(func=cmd_check)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
