"""deploy/: systemd units, nftables rules, Kubernetes manifests, container file, dashboard.

Each artefact is checked by the tool that would refuse it in production: systemd-analyze,
nft in a network namespace, Kubernetes OpenAPI schemas (kubernetes-validate, offline) and
the Prometheus Operator's CRD models for the PodMonitor.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from netblock.config import load_config, parse_hostport

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNITS = DEPLOY / "systemd"
K8S = DEPLOY / "kubernetes"
NFT = DEPLOY / "nftables" / "netblock-gateway.nft"
STUB_EXEC = "/opt/netblock/bin/netblock"

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces")


def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, **kwargs)


# --- systemd ------------------------------------------------------------------------------------


def unit_copy(tmp_path: Path, name: str, edit: Any = None) -> Path:
    """The shipped unit with ExecStart pointing at an executable that exists here."""
    text = (UNITS / name).read_text().replace(STUB_EXEC, str(REPO / ".venv" / "bin" / "netblock"))
    if edit:
        text = edit(text)
    path = tmp_path / name
    path.write_text(text)
    return path


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    systemd_analyze = shutil.which("systemd-analyze")
    assert systemd_analyze, "systemd-analyze missing: apt-get install systemd (tests/apt-packages.txt)"
    return run(systemd_analyze, "verify", "--man=no", str(path), cwd=path.parent)


@pytest.mark.parametrize("name", ["netblock.service", "netblock-inspector.service"])
def test_systemd_analyze_verify_accepts_units(tmp_path, name):
    assert (REPO / ".venv" / "bin" / "netblock").exists()
    result = verify(unit_copy(tmp_path, name))
    # verify exits 0 on unknown keys but warns: demand silence, not just the exit code.
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_systemd_analyze_verify_catches_a_typo(tmp_path):
    # The check above is only worth something if verify speaks up on a broken unit.
    result = verify(unit_copy(tmp_path, "netblock.service", lambda t: t.replace("ProtectSystem=", "ProtectSytem=")))
    assert "Unknown key" in result.stderr


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_netblock_service_privileges():
    s = unit_settings("netblock.service")
    assert s["User"] == ["netblock"] and s["Group"] == ["netblock"]
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert s["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]
    assert s["StateDirectory"] == ["netblock"]  # /var/lib/netblock, owned by the service user
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["ExecStart"][0].endswith(" serve -c /etc/netblock/netblock.yaml")
    # Production config agrees: state under /var/lib/netblock, logs under /var/log/netblock.
    prod = load_config(REPO / "config" / "production.yaml")
    assert prod.events.sqlite.startswith("/var/lib/netblock/")
    assert prod.events.jsonl.startswith(("/var/lib/netblock/", "/var/log/netblock/"))


def test_inspector_service_privileges():
    s = unit_settings("netblock-inspector.service")
    assert sorted(s["AmbientCapabilities"][0].split()) == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert sorted(s["CapabilityBoundingSet"][0].split()) == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert "AF_PACKET" in s["RestrictAddressFamilies"][0]


def test_netblock_service_exposure_is_low(tmp_path):
    path = unit_copy(tmp_path, "netblock.service")
    result = run("systemd-analyze", "security", "--offline=true", "--no-pager", str(path), cwd=tmp_path)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    # systemd rates 0-10; "OK" is below 2.0 (a stock service scores 9.6).
    assert float(match.group(1)) < 2.0, result.stdout


# --- nftables -----------------------------------------------------------------------------------


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Netns:
        result = run("ip", "netns", "add", self.name)
        assert result.returncode == 0, result.stderr
        return self

    def __exit__(self, *exc: object) -> None:
        run("ip", "netns", "delete", self.name)

    def run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, *args, **kwargs)


def ns_name(tag: str) -> str:
    return f"nbt-{tag}-{uuid.uuid4().hex[:6]}"


@root_only
def test_nft_rules_load_in_a_namespace():
    assert shutil.which("nft"), "nft missing: apt-get install nftables (tests/apt-packages.txt)"
    with Netns(ns_name("nft")) as ns:
        check = ns.run("nft", "-c", "-f", str(NFT))
        assert check.returncode == 0, check.stderr
        # Load for real, twice: the file replaces its table, so a reload leaves one copy.
        for _ in range(2):
            load = ns.run("nft", "-f", str(NFT))
            assert load.returncode == 0, load.stderr
        listing = ns.run("nft", "list", "ruleset").stdout
        assert listing.count("table inet netblock_dns") == 1
        for chain in ("chain prerouting", "chain forward", "chain output"):
            assert chain in listing
        assert "dnat ip to 192.0.2.53" in listing and "dnat ip6 to 2001:db8::53" in listing
        assert listing.count("th dport 853") >= 1 and "@doh_v4" in listing and "@doh_v6" in listing


@root_only
def test_nft_check_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "broken.nft"
    broken.write_text(NFT.read_text().replace("dnat ip to $NETBLOCK_V4", "dnat ip to $NO_SUCH_DEFINE"))
    with Netns(ns_name("bad")) as ns:
        assert ns.run("nft", "-c", "-f", str(broken)).returncode != 0


# --- Kubernetes ---------------------------------------------------------------------------------

K8S_VERSION = "1.30.0"


def manifests() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                out.append((name, doc))
    return out


def blocklists_configmap() -> dict[str, Any]:
    """What `kubectl create configmap netblock-blocklists --from-file=blocklists/` makes."""
    data = {p.name: p.read_text() for p in sorted((REPO / "blocklists").glob("*.yaml"))}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "netblock-blocklists", "namespace": "netblock"},
        "data": data,
    }


def validate_operator_crd(doc: dict[str, Any]) -> None:
    """The Prometheus Operator's CRDs (PodMonitor, PrometheusRule) as pydantic models; unknown keys fail too."""
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, doc["kind"]).model_validate(doc)
    dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")

    def unknown(src: Any, kept: Any, where: str) -> list[str]:
        if isinstance(src, dict):
            missing = [f"{where}.{k}" for k in src if not isinstance(kept, dict) or k not in kept]
            return missing + [
                p for k in src if isinstance(kept, dict) and k in kept for p in unknown(src[k], kept[k], f"{where}.{k}")
            ]
        if isinstance(src, list) and isinstance(kept, list):
            return [p for i, (a, b) in enumerate(zip(src, kept, strict=False)) for p in unknown(a, b, f"{where}[{i}]")]
        return []

    dropped = unknown(doc, dumped, "")
    assert not dropped, f"unknown keys in {doc['kind']}: {dropped}"


def validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        validate_operator_crd(doc)
        return
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_manifests_pass_schema_validation():
    docs = [*manifests(), ("blocklists", blocklists_configmap())]
    kinds = sorted(d["kind"] for _, d in docs)
    assert kinds == sorted(
        [
            "Namespace",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodMonitor",
            "PrometheusRule",
        ]
    )
    for name, doc in docs:
        try:
            validate(doc)
        except Exception as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc}")


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        ("Deployment", lambda d: d["spec"].__setitem__("replicas", "two")),
        (
            "Deployment",
            lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("readinesProbe", {}),
        ),
        ("Service", lambda d: d["spec"]["ports"][0].__setitem__("port", "fifty-three")),
        (
            "PodMonitor",
            lambda d: d["spec"].__setitem__("podMetricEndpoints", d["spec"].pop("podMetricsEndpoints")),
        ),
        ("PodMonitor", lambda d: d["spec"]["podMetricsEndpoints"][0].__setitem__("interval", "fifteen")),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].__setitem__("for", "two minutes")),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].__setitem__("annotation", {})),
    ],
)
def test_schema_validation_rejects_broken_manifests(kind, mutate):
    # The validators are offline; show they do catch typos and wrong types, not pass everything.
    doc = copy.deepcopy(next(d for _, d in manifests() if d["kind"] == kind))
    mutate(doc)
    with pytest.raises(Exception):  # noqa: B017 - jsonschema, pydantic or our own AssertionError
        validate(doc)


def k8s(kind: str) -> dict[str, Any]:
    return next(d for _, d in manifests() if d["kind"] == kind)


def test_kubernetes_deployment_shape(tmp_path):
    deployment, service = k8s("Deployment"), k8s("Service")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    container = pod["containers"][0]
    ports = {p["name"]: p for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Service: 53 over UDP and TCP onto the container's DNS ports.
    assert sorted((p["port"], p["protocol"], p["targetPort"]) for p in service["spec"]["ports"]) == [
        (53, "TCP", "dns-tcp"),
        (53, "UDP", "dns-udp"),
    ]
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    # The embedded config is one netblock itself accepts, and listens where the pod says.
    config_map = k8s("ConfigMap")
    path = tmp_path / "netblock.yaml"
    path.write_text(config_map["data"]["netblock.yaml"])
    config = load_config(path)
    assert {parse_hostport(a)[1] for a in config.server.listen} == {ports["dns-udp"]["containerPort"]}
    assert parse_hostport(config.metrics.listen)[1] == ports["metrics"]["containerPort"]
    # The blocklists ConfigMap is a directory mount (no subPath: kubelet updates reach the
    # watcher) at the folder the config's list glob reads.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "blocklists")
    assert "subPath" not in mount
    assert config.policy.lists == (mount["mountPath"] + "/*.yaml",)
    assert config.policy.watch is True
    volume = next(v for v in pod["volumes"] if v["name"] == "blocklists")
    assert volume["configMap"]["name"] == blocklists_configmap()["metadata"]["name"]
    # PDB, HPA and PodMonitor point at the same pods.
    assert k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    hpa = k8s("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"] and hpa["minReplicas"] >= 2
    podmonitor = k8s("PodMonitor")["spec"]
    assert podmonitor["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert podmonitor["podMetricsEndpoints"][0]["port"] == "metrics"


# --- container ----------------------------------------------------------------------------------


def test_containerfile_is_slim_nonroot_with_healthcheck():
    text = (DEPLOY / "Containerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", f) for f in froms), froms
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("HEALTHCHECK ") for line in lines) and "/readyz" in text
    # Every COPY source exists in the repository (the build context is the repo root).
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
    # The image's config is valid and listens on what the file exposes.
    config = load_config(DEPLOY / "container" / "netblock.yaml")
    exposed = {p for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
    for address in config.server.listen:
        port = parse_hostport(address)[1]
        assert {f"{port}/udp", f"{port}/tcp"} <= exposed
    assert f"{parse_hostport(config.metrics.listen)[1]}/tcp" in exposed
    assert "127.0.0.1:9153/readyz" in text and parse_hostport(config.metrics.listen)[1] == 9153


# --- dashboards and rules use only metrics netblock exports --------------------------------------


def exported_names() -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    from netblock.config import Config, Metrics
    from netblock.metrics import MetricsServer
    from test_metrics import make_server

    metrics = MetricsServer(Config(metrics=Metrics(per_device=True, listen="127.0.0.1:0")), make_server())
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\bnetblock_[a-z0-9_]+", expr))


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "netblock.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_and_rules_use_exported_metrics():
    names = exported_names()
    dashboard = json.loads((DEPLOY / "grafana" / "netblock.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in (
        "Answers by source",
        "Blocked by list",
        "Blocked by vendor (range)",
        "Top devices (range)",
        "Upstream latency p95",
        "Cache hit ratio",
        "Policy reload",
        "Inspector detections by kind",
    ):
        assert wanted in titles
    used = set()
    for title, expr in dashboard_exprs():
        assert referenced(expr), (title, expr)
        used |= referenced(expr)
    rules = yaml.safe_load((DEPLOY / "prometheus" / "netblock-rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= referenced(rule["expr"])
    assert used and not used - names, sorted(used - names)
    # The instance variable is filled from a metric that exists.
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "instance")
    assert referenced(variable["definition"]) <= names


def healthcheck_command(port: int) -> list[str]:
    text = (DEPLOY / "Containerfile").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("HEALTHCHECK "))
    command = json.loads(line[line.index("CMD ") + 4 :].strip())
    assert command[0] == "python"  # the image's venv python is first on PATH
    return [
        shutil.which("python3") or "python3",
        *[c.replace("127.0.0.1:9153", f"127.0.0.1:{port}") for c in command[1:]],
    ]


def test_container_healthcheck_command_against_real_server(netblock, tmp_path):
    from harness import free_port

    assert run(*healthcheck_command(netblock.metrics_port)).returncode == 0
    # Nothing listening: the check fails (and so does an unready server: /readyz 503 raises).
    assert run(*healthcheck_command(free_port())).returncode != 0


def test_prometheusrule_matches_the_rule_file():
    # One set of alerts: the Operator's PrometheusRule carries the promtool-tested groups.
    crd = k8s("PrometheusRule")["spec"]["groups"]
    plain = yaml.safe_load((DEPLOY / "prometheus" / "netblock-rules.yml").read_text())["groups"]
    assert crd == plain
