"""Kubernetes ConfigMap updates reach the running server through the hot reload.

The Deployment mounts the blocklists ConfigMap as a directory. The kubelet updates such a
mount the way its AtomicWriter does: each key is a symlink `name -> ..data/name`, `..data`
is a symlink to a timestamped folder, and an update writes a new folder and renames a new
`..data` symlink over the old one. This test publishes lists exactly that way into a folder
the real server watches, and checks that the new list is enforced and reported.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import dns.rcode
from prometheus_client.parser import text_string_to_metric_families

from harness import Netblock, wait_for

LIST_V1 = """name: k8slist
vendor: Test vendor
policy: {id: TEST-K8S-1}
action: block
domains: [first.k8s.test]
"""
LIST_V2 = LIST_V1.replace("domains: [first.k8s.test]", "domains: [first.k8s.test, second.k8s.test]")


def publish(root: Path, files: dict[str, str], generation: int) -> None:
    """What the kubelet's AtomicWriter does on a ConfigMap update."""
    root.mkdir(exist_ok=True)
    folder = root / f"..2026_11_28_00_00_0{generation}.{1000 + generation}"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    old = os.readlink(root / "..data") if (root / "..data").is_symlink() else None
    os.symlink(folder.name, root / "..data_tmp")
    os.rename(root / "..data_tmp", root / "..data")  # the one atomic step
    for name in files:
        if not (root / name).is_symlink():
            os.symlink(f"..data/{name}", root / name)
    if old:
        shutil.rmtree(root / old)


def metrics(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def digest(port: int) -> str:
    (labels,) = metrics(port)["netblock_policy_info"]
    return dict(labels)["digest"]


def test_configmap_update_is_enforced_without_restart(tmp_path, upstream):
    mount = tmp_path / "blocklists"
    publish(mount, {"k8slist.yaml": LIST_V1}, 1)
    with Netblock(tmp_path / "nb", [upstream.address], lists=[mount / "*.yaml"]) as server:
        assert server.query("first.k8s.test").rcode() == dns.rcode.NXDOMAIN
        assert server.query("second.k8s.test").rcode() != dns.rcode.NXDOMAIN  # not blocked yet
        before = digest(server.metrics_port)
        entries = metrics(server.metrics_port)["netblock_policy_entries"]
        assert entries[(("action", "block"), ("list", "k8slist"), ("vendor", "Test vendor"))] == 1
        pid = server.pid

        publish(mount, {"k8slist.yaml": LIST_V2}, 2)

        assert wait_for(lambda: digest(server.metrics_port) != before, 15, 0.2), server.log()
        assert server.query("second.k8s.test").rcode() == dns.rcode.NXDOMAIN
        assert server.query("first.k8s.test").rcode() == dns.rcode.NXDOMAIN
        after = metrics(server.metrics_port)
        assert (
            after["netblock_policy_entries"][(("action", "block"), ("list", "k8slist"), ("vendor", "Test vendor"))] == 2
        )
        assert after["netblock_policy_last_reload_successful"][()] == 1
        assert server.pid == pid and server.proc is not None and server.proc.poll() is None  # no restart

        # A broken update (what a bad `kubectl apply` would publish) keeps the last good policy
        # and says so in the metrics the alert rule watches.
        good = digest(server.metrics_port)
        publish(mount, {"k8slist.yaml": LIST_V2 + "domains_typo: [x]\n"}, 3)
        assert wait_for(
            lambda: metrics(server.metrics_port)["netblock_policy_last_reload_successful"][()] == 0, 15, 0.2
        ), server.log()
        assert digest(server.metrics_port) == good
        assert server.query("second.k8s.test").rcode() == dns.rcode.NXDOMAIN


def test_config_configmap_policy_change_is_reloaded(tmp_path, upstream):
    """A config mounted from a ConfigMap directory (symlinks the kubelet swaps): `policy:` edits apply live."""
    import yaml

    lists = tmp_path / "blocklists"
    publish(lists, {"k8slist.yaml": LIST_V1}, 1)
    config_mount = tmp_path / "config"
    foundation = Path(__file__).resolve().parent / "data" / "foundation" / "testnet.yaml"

    class Mounted(Netblock):
        generation = 0

        def write_config(self) -> None:
            Mounted.generation += 1
            publish(config_mount, {"netblock.yaml": yaml.safe_dump(self.settings, sort_keys=False)},
                    Mounted.generation)

    server = Mounted(tmp_path / "nb", [upstream.address], lists=[lists / "*.yaml"])
    server.config_path = config_mount / "netblock.yaml"
    with server:
        assert server.query("tracker.blocked.test").rcode() == dns.rcode.NOERROR  # upstream answers
        before = digest(server.metrics_port)
        server.settings["policy"]["lists"] = [str(lists / "*.yaml"), str(foundation)]
        server.write_config()  # the kubelet's swap, with the edited ConfigMap
        assert wait_for(lambda: digest(server.metrics_port) != before, 15, 0.2), server.log()
        assert server.query("tracker.blocked.test").rcode() == dns.rcode.NXDOMAIN
        assert server.query("first.k8s.test").rcode() == dns.rcode.NXDOMAIN
