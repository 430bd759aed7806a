"""What happens to a detection: a metric, an event for the device, then enforcement.

Runs in the capture loop, so everything here is an int increment, a deque append
(EventRecorder.record) or a raw-socket send; nft and logging work goes to threads.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from netblock.inspect.detect import Detection
from netblock.inspect.packet import SYN, TCP

# Stages decided by a server name: the flow is known, so TCP can be reset precisely.
NAMED = frozenset(("sni", "http-host", "quic", "doh"))


class Sink:
    def __init__(
        self,
        events: Any,
        stats: Any,
        *,
        resetter: Any = None,
        killer: Any = None,
        sets: Any = None,
        keep: int = 0,
        hooks: tuple[Callable[[Detection], None], ...] = (),
    ) -> None:
        self.events = events
        self.stats = stats
        self.resetter = resetter
        self.killer = killer
        self.sets = sets
        self.hooks = hooks
        self.count = 0
        self.by_stage: dict[str, int] = {}
        # The newest detections, for `--pcap` output and tests; bounded.
        self.recent: collections.deque[Detection] = collections.deque(maxlen=keep or 1)
        self.keep = keep
        self.engine: Any = None  # set by the runner: follow-up resets from later segments
        self.latencies: list[float] = []

    def __call__(self, det: Detection) -> None:
        self.count += 1
        self.by_stage[det.stage] = self.by_stage.get(det.stage, 0) + 1
        if self.stats is not None:
            counts = self.stats.inspector_detections
            key = (det.stage, det.rule.list_name)
            counts[key] = counts.get(key, 0) + 1
        if self.events is not None:
            self.events.record(
                det.pkt.ts, det.client_ip, det.mac, det.name, det.qtype, det.rule, det.stage, det.protocol
            )
        if self.keep:
            self.recent.append(det)
        for hook in self.hooks:
            hook(det)
        if det.rule.action == "block":
            self._enforce(det)

    def _enforce(self, det: Detection) -> None:
        pkt = det.pkt
        tcp = pkt.proto == TCP
        if tcp and self.resetter is not None:
            if pkt.flags & SYN:
                self.resetter.refuse_syn(pkt)
            else:
                self.resetter.reset_flow(pkt, det.end_seq)
                if len(self.latencies) < 10_000:
                    # receive -> resets sent (live capture stamps packets at receive time)
                    self.latencies.append(time.time() - pkt.ts)
                if self.engine is not None:
                    self.engine.kill(pkt)
                if self.killer is not None:
                    self.killer.add(pkt)
        if self.sets is None:
            return
        proto = "tcp" if tcp else "udp"
        if det.stage == "ip":
            self.sets.block_pair(pkt.src, pkt.dst)  # a listed range: every port
        elif det.stage in NAMED and not (tcp and pkt.flags & SYN):
            # This connection only: another name on the same (shared, CDN) address still works.
            self.sets.block_connection(pkt.src, proto, pkt.sport, pkt.dst, pkt.dport)
        else:
            # DoT, DoQ, DoH by address, foreign DNS: this client's use of that service.
            self.sets.block_flow(pkt.src, pkt.dst, proto, pkt.dport)
