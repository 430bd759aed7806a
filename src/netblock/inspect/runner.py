"""Puts an inspector together from the config: policy, DoH list, events, enforcement,
and one packet source (live interface, capture file or NFQUEUE)."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netblock.config import Config, parse_hostport
from netblock.config import Inspector as Inspector_defaults
from netblock.inspect.capture import LiveCapture, build_filter, replay_file
from netblock.inspect.detect import Detection, Engine
from netblock.inspect.record import Sink
from netblock.policy.lists import load_list
from netblock.policy.match import Policy, compile_policy
from netblock.policy.reload import build_policy, list_paths
from netblock.stats import Stats
from netblock.yamlsrc import SourceError

log = logging.getLogger("netblock.inspect")

ENFORCE_MODES = ("rst", "nft", "nfqueue")


@dataclass
class Loaded:
    policy: Policy
    doh: Policy | None
    doh_name: str
    resolvers: frozenset[bytes]
    networks: list[str] = field(default_factory=list)  # blocked and DoH ranges, for the filter


def load(config: Config) -> Loaded:
    """Policy (same lists as the DNS server), DoH list, and netblock's own addresses."""
    policy, errors = build_policy(config)
    if policy is None:
        raise (SourceError(errors[0].path, errors[0].line, errors[0].message) if errors else RuntimeError("no policy"))
    doh: Policy | None = None
    doh_name = "doh-resolvers"
    path = config.resolve(config.inspector.doh_list) if config.inspector.doh_list else None
    if path is not None and not path.exists() and config.inspector.doh_list == Inspector_defaults.doh_list:
        log.warning("no DoH resolver list at %s: DoH is detected only through the policy lists", path)
        path = None
    if path is not None:
        lst, errs = load_list(path)
        if errs:
            raise errs[0]
        if lst is not None:
            doh, doh_name = compile_policy([lst]), lst.name
    addresses = list(config.inspector.resolvers)
    if not addresses:  # netblock's own listen addresses, when they are real ones
        for listen in config.server.listen:
            host, _ = parse_hostport(listen)
            ip = ipaddress.ip_address(host)
            if not (ip.is_loopback or ip.is_unspecified):
                addresses.append(host)
    resolvers = frozenset(ipaddress.ip_address(a).packed for a in addresses)
    networks = [lst_entry.name for lst in policy.lists if lst.action != "allow" for lst_entry in lst.networks]
    if doh is not None:
        networks += [e.name for lst in doh.lists for e in lst.networks]
    return Loaded(policy, doh, doh_name, resolvers, networks)


def make_recorder(config: Config, stats: Stats) -> Any:
    """The shared event store; `from_config` once the per-device work lands."""
    from netblock import events

    recorder_cls = events.EventRecorder
    from_config = getattr(recorder_cls, "from_config", None)
    if from_config is not None:
        return from_config(config, stats)
    if not config.events.enabled:
        return None
    return recorder_cls(config.resolve(config.events.jsonl), config.events.queue_size, config.server.instance)


class Inspector:
    def __init__(
        self,
        config: Config,
        enforce: tuple[str, ...] = (),
        keep: int = 0,
        nft_timeout: int = 300,
        stats: Stats | None = None,
        events: Any = None,
    ) -> None:
        """`stats` and `events` may be shared with a DNS server in the same process."""
        self.config = config
        self.enforce = enforce
        self.loaded = load(config)
        self.stats = stats if stats is not None else Stats()
        self.events = events if events is not None else make_recorder(config, self.stats)
        self.metrics: Any = None
        self.resetter: Any = None
        self.killer: Any = None
        self.sets: Any = None
        self.verdicts: Any = None
        self.nft_timeout = nft_timeout
        self._stop = threading.Event()
        self.sink = Sink(self.events, self.stats, keep=keep)
        ins = config.inspector
        self.engine = Engine(
            self.loaded.policy,
            self.sink,
            doh=self.loaded.doh,
            doh_list_name=self.loaded.doh_name,
            resolvers=self.loaded.resolvers,
            enforcing=bool(enforce),
            flow_timeout=ins.flow_timeout,
            max_flows=ins.max_flows,
            stats=self.stats,
        )
        if not self.loaded.resolvers:
            log.warning("inspector.resolvers is empty: DNS to foreign resolvers is not detected")

    # -- enforcement set-up and tear-down --------------------------------------------
    def _start_enforcement(self, interface: str) -> None:
        if self.enforce:
            # Resets race the server's reply (~1 ms on a LAN): when a packet arrives the
            # capture thread must get the GIL back from the writer threads quickly.
            sys.setswitchinterval(0.0005)
        if "rst" in self.enforce or "nfqueue" in self.enforce:
            from netblock.inspect.rst import Killer, Resetter

            self.resetter = Resetter()
            if interface and "rst" in self.enforce:
                self.killer = Killer(interface, self.resetter)
                self.killer.start()
        if "nft" in self.enforce:
            from netblock.inspect.nft import Nft, NftSets

            self.sets = NftSets(Nft(), self.nft_timeout)
            self.sets.install()
            log.info("nft sets installed (%s)", self.sets.nft.backend)
        self.sink.resetter = self.resetter if "rst" in self.enforce else None
        if self.sink.resetter is not None:
            self.sink.engine = self.engine
            self.engine.on_killed = self.resetter.reset_from
        self.sink.killer = self.killer
        self.sink.sets = self.sets

    def _start_metrics(self) -> None:
        listen = self.config.inspector.metrics_listen
        if not listen:
            return
        import dataclasses
        import types

        from netblock.metrics import MetricsServer

        metrics = dataclasses.replace(self.config.metrics, listen=listen, enabled=True)
        config = dataclasses.replace(self.config, metrics=metrics)
        self.metrics = MetricsServer(config, types.SimpleNamespace(stats=self.stats, started=self.stats.started))
        self.metrics.start()

    def _stop_enforcement(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        if self.killer is not None:
            self.killer.stop()
        if self.sets is not None:
            self.sets.remove()
        if self.resetter is not None:
            self.resetter.close()

    def stop(self) -> None:
        self._stop.set()

    def reload(self) -> bool:
        """Reload the lists (SIGHUP, or a changed file); on any error keep the current ones."""
        try:
            loaded = load(self.config)
        except (SourceError, OSError, RuntimeError) as exc:
            log.error("inspector: policy reload refused, keeping the current lists: %s", exc)
            self.stats.reload_failures += 1
            return False
        self.loaded = loaded
        self.engine.set_policy(loaded.policy, loaded.doh)
        self.stats.reload_successes += 1
        log.info("inspector: policy reloaded (digest %s)", loaded.policy.digest)
        return True

    def reload_in_background(self) -> None:
        threading.Thread(target=self.reload, name="inspect-reload", daemon=True).start()

    def _watch(self) -> None:
        """Poll the list files' modification times (policy.watch): a change reloads."""

        def snapshot() -> dict[str, float]:
            paths = [str(p) for p in list_paths(self.config)]
            if self.config.inspector.doh_list:
                paths.append(str(self.config.resolve(self.config.inspector.doh_list)))
            stamps = {}
            for path in paths:
                try:
                    stamps[path] = os.stat(path).st_mtime
                except OSError:
                    stamps[path] = -1.0
            return stamps

        seen = snapshot()
        while not self._stop.wait(max(0.2, self.config.policy.watch_interval)):
            now = snapshot()
            if now != seen:
                seen = now
                self.reload()

    def _start_watch(self) -> None:
        if self.config.policy.watch:
            threading.Thread(target=self._watch, name="inspect-watch", daemon=True).start()

    # -- sources ------------------------------------------------------------------
    def run_pcap(self, path: str) -> dict[str, Any]:
        if self.events is not None:
            self.events.start()
        started = time.perf_counter()
        frames, decoded = replay_file(path, self.engine.handle)
        elapsed = time.perf_counter() - started
        if self.events is not None:
            self.events.stop()
        return self.summary(
            frames=frames,
            decoded=decoded,
            seconds=round(elapsed, 4),
            pps=round(frames / elapsed) if elapsed > 0 else 0,
        )

    def _start_services(self, ready: Path | None, duration: float) -> float:
        """Metrics, list watching and the event writer; the run's deadline (0: none)."""
        self._start_metrics()
        self._start_watch()
        if self.events is not None:
            self.events.start()
        deadline = time.monotonic() + duration if duration else 0.0
        if ready is not None:
            ready.write_text("ready\n")
        return deadline

    def run_live(self, interface: str, ready: Path | None = None, duration: float = 0.0) -> dict[str, Any]:
        capture = LiveCapture(interface, build_filter(self.loaded.networks))
        self._start_enforcement(interface)
        deadline = self._start_services(ready, duration)
        log.info("inspecting %s (enforce: %s)", interface, ",".join(self.enforce) or "none")
        try:
            capture.run(
                self.engine.handle,
                lambda: self._stop.is_set() or bool(deadline and time.monotonic() > deadline),
            )
        finally:
            drops = capture.drops()
            capture.close()
            self._stop_enforcement()
            if self.events is not None:
                self.events.stop()
        return self.summary(frames=capture.received, kernel_drops=drops, errors=capture.errors)

    def run_nfqueue(
        self,
        queue: int,
        interface: str = "",
        ready: Path | None = None,
        duration: float = 0.0,
        rules: bool = True,
    ) -> dict[str, Any]:
        from netblock.inspect import nfqueue

        self._start_enforcement(interface)
        resetter = self.resetter
        self.verdicts = nfqueue.Verdicts(self.engine.handle, resetter.reset_flow)
        self.sink.hooks = (*self.sink.hooks, self.verdicts.note)
        self.sink.resetter = None  # the verdict path resets; the sink must not send twice
        if rules:
            nfqueue.install(queue)
        deadline = self._start_services(ready, duration)
        try:
            nfqueue.run_queue(
                queue,
                self.verdicts,
                lambda: self._stop.is_set() or bool(deadline and time.monotonic() > deadline),
            )
        finally:
            if rules:
                nfqueue.remove()
            self._stop_enforcement()
            if self.events is not None:
                self.events.stop()
        return self.summary(accepted=self.verdicts.accepted, dropped=self.verdicts.dropped, errors=self.verdicts.errors)

    def summary(self, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "packets": self.engine.packets,
            "detections": self.sink.count,
            "by_stage": dict(self.sink.by_stage),
            "notes": dict(self.engine.notes),
        }
        if self.resetter is not None:
            out["resets_sent"] = self.resetter.sent
        if self.enforce and self.sink.latencies:
            ordered = sorted(self.sink.latencies)
            out["enforce_latency_us"] = {
                "median": round(ordered[len(ordered) // 2] * 1e6),
                "max": round(ordered[-1] * 1e6),
                "count": len(ordered),
            }
        if self.killer is not None:
            out["follow_up_resets"] = self.killer.resent
        if self.sets is not None:
            out["nft_elements"] = self.sets.added
            out["nft_errors"] = self.sets.errors
        if self.events is not None:
            out["events_dropped"] = getattr(self.events, "dropped", 0)
        out.update(extra)
        return out


def describe(det: Detection) -> dict[str, Any]:
    """A detection as a plain dict (for --pcap output)."""
    return {
        "ts": det.pkt.ts,
        "stage": det.stage,
        "name": det.name,
        "qtype": det.qtype,
        "client": det.client_ip,
        "mac": det.mac,
        "server": det.server_ip,
        "sport": det.pkt.sport,
        "dport": det.pkt.dport,
        "protocol": det.protocol,
        "list": det.rule.list_name,
        "pattern": det.rule.pattern,
        "action": det.rule.action,
        "alpn": list(det.alpn),
        "ech": det.ech,
        "quic_version": det.version,
    }
