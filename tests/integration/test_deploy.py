"""The deploy side: docker-compose.yml and deploy/ (Prometheus, alerts, Grafana, Kubernetes).

No Docker and no cluster here, so the files are checked for what can go wrong without
one: they parse; what compose mounts and builds exists; the services point at each other
(Prometheus scrapes the proxy's metrics address, Grafana reads that Prometheus and mounts
the dashboard where its provider looks); the Kubernetes manifests keep what live reload and
graceful shutdown need; every metric the alerts and the dashboard query is one a running
shardwire exports (a real proxy is started and scraped); and promtool accepts the rules
and the config and runs the rules' unit tests. promtool is required (like PostgreSQL, it
fails rather than skips when missing): scripts/ensure-system-deps.sh installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import psycopg
import pytest
import yaml

from proxy.config import Config, load_config
from proxy.localpg import LocalPostgres
from tests.integration.conftest import (
    RunningProxy,
    assert_clean_log,
    base_topology,
    start_proxy,
)
from tests.integration.test_routing_helpers import (
    drop_everywhere,
    run_everywhere,
    via,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_DIR = DEPLOY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "shardwire.json"
K8S = DEPLOY / "k8s"
README = DEPLOY / "README.md"

# The metric families shardwire exports (name without the `_total` of counters), by kind.
EXPECTED_FAMILIES: dict[str, str] = {
    "shardwire_shard_requests": "counter",
    "shardwire_shard_request_duration_seconds": "histogram",
    "shardwire_cross_shard_queries": "counter",
    "shardwire_scatter_gather_shards": "histogram",
    "shardwire_pool_connections": "gauge",
    "shardwire_pool_size": "gauge",
    "shardwire_client_connections": "gauge",
    "shardwire_replication_lag_seconds": "gauge",
    "shardwire_shard_up": "gauge",
    "shardwire_errors": "counter",
    "shardwire_topology_version": "gauge",
    "shardwire_topology_reloads": "counter",
    "shardwire_plan_cache_hits": "counter",
    "shardwire_plan_cache_misses": "counter",
    "shardwire_twophase_commits": "counter",
    "shardwire_twophase_recovered": "counter",
    "shardwire_failovers": "counter",
}
# The labels the alerts and the dashboard rely on (checked on the samples a scrape has).
EXPECTED_LABELS: dict[str, frozenset[str]] = {
    "shardwire_shard_requests": frozenset({"shard", "operation"}),
    "shardwire_shard_request_duration_seconds": frozenset({"shard", "operation"}),
    "shardwire_cross_shard_queries": frozenset({"query_type"}),
    "shardwire_pool_connections": frozenset({"shard", "role", "state"}),
    "shardwire_pool_size": frozenset({"shard", "role"}),
    "shardwire_replication_lag_seconds": frozenset({"shard", "replica"}),
    "shardwire_shard_up": frozenset({"shard", "role", "host"}),
    "shardwire_errors": frozenset({"sqlstate_class"}),
    "shardwire_topology_reloads": frozenset({"result"}),
    "shardwire_failovers": frozenset({"shard"}),
}
# The series names PromQL sees for a family of each kind (`# TYPE` line of the text format).
SERIES_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "untyped": ("",),
}
METRIC_NAME = re.compile(r"\bshardwire_[a-z0-9_]+")
# Grafana's variables, replaced by something Prometheus parses, to check panels' PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                     "$shard": ".*"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml"), COMPOSE])


def series_names(family: str, kind: str) -> set[str]:
    base = family[: -len("_total")] if kind == "counter" and family.endswith("_total") \
        else family
    return {base + suffix for suffix in SERIES_SUFFIXES.get(kind, ("",))}


def family_of(series: str) -> str:
    """`shardwire_x_total` / `_bucket` / `_sum` / `_count` -> `shardwire_x`."""
    for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
        if series.endswith(suffix) and series[: -len(suffix)] in EXPECTED_FAMILIES:
            return series[: -len(suffix)]
    return series


EXPECTED_SERIES: dict[str, str] = {
    name: family for family, kind in EXPECTED_FAMILIES.items()
    for name in series_names(family, kind)}


# --------------------------------------------------------------------------- the files


def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    exprs = [target["expr"] for panel in dashboard_panels()
             for target in panel.get("targets", []) if target.get("expr")]
    for var in dashboard()["templating"]["list"]:
        if var.get("type") == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def alert_queries() -> list[str]:
    return [str(rule["expr"]) for rule in alert_rules()]


def k8s_objects() -> dict[str, dict[str, Any]]:
    """The manifests of deploy/k8s by kind (one object of each kind)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is None:
                continue
            kind = doc["kind"]
            assert kind not in out, f"two {kind} objects in deploy/k8s"
            out[kind] = doc
    return out


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file a compose service sees at `container_path` through its bind
    mounts (short syntax `./src:/dst[:mode]`), or None."""
    target = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        if not isinstance(volume, str) or not volume.startswith("."):
            continue
        source, dest = volume.split(":")[:2]
        try:
            rest = target.relative_to(dest)
        except ValueError:
            continue
        return ROOT / source / rest
    return None


def command_option(args: list[str], option: str) -> str:
    """The value of `--option VALUE` or `--option=VALUE` in an argument list."""
    for i, arg in enumerate(args):
        if arg == option:
            return args[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{option} not in {args}")


def seconds(duration: str | int | float) -> float:
    """A compose duration (`30s`, `1m30s`, or a number of seconds)."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def compose_topology() -> Config:
    shardwire = compose()["services"]["shardwire"]
    path = host_path(shardwire, command_option(shardwire["command"], "--config"))
    assert path is not None and path.is_file(), "the proxy's --config is not mounted"
    return load_config(path)


def k8s_topology(tmp_path: Path) -> Config:
    configmap = k8s_objects()["ConfigMap"]
    path = tmp_path / "topology.yaml"
    path.write_text(configmap["data"]["topology.yaml"], encoding="utf-8")
    return load_config(path)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def container_port(ctr: dict[str, Any], port: int | str) -> int:
    """A probe's or a Service's target port (a number or a container port's name)."""
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in ctr["ports"] if p.get("name") == port]
    return int(found)


@pytest.mark.parametrize("path", yaml_files(), ids=rel)
def test_yaml_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert docs and all(isinstance(doc, dict) for doc in docs), rel(path)


def test_dashboard_json_parses() -> None:
    data = dashboard()
    assert data["uid"] == "shardwire" and data["panels"]


# --------------------------------------------------------------------------- compose


def test_compose_bind_mounts_and_build_exist() -> None:
    services = compose()["services"]
    assert {"shardwire", "prometheus", "grafana"} <= set(services)
    mounts = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                source = volume["source"] if volume.get("type") == "bind" else None
            else:
                source = volume.split(":")[0]
            if source is not None and source.startswith((".", "/")):
                mounts += 1
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    assert mounts >= 5
    build = services["shardwire"]["build"]
    context = ROOT / build["context"]
    dockerfile = context / build["dockerfile"]
    assert dockerfile.is_file()
    # BuildKit reads <Dockerfile>.dockerignore next to it (keeps the context small).
    assert dockerfile.with_name(dockerfile.name + ".dockerignore").is_file()
    text = dockerfile.read_text(encoding="utf-8")
    assert re.search(r"^EXPOSE .*\b6432\b.*\b9930\b", text, re.M)
    assert re.search(r"^USER (?!root\b)\S+", text, re.M)


def test_compose_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        if "image" in service and "build" not in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"


def test_compose_proxy_topology_and_shutdown() -> None:
    shardwire = compose()["services"]["shardwire"]
    config = compose_topology()
    assert config.metrics is not None and config.metrics.enabled
    assert config.metrics.host == "0.0.0.0", "Prometheus scrapes from another container"
    published = {str(p).rsplit(":", 1)[-1] for p in shardwire["ports"]}
    assert {str(config.listen.port), str(config.metrics.port)} <= published
    # docker stop waits stop_grace_period, then SIGKILLs: the graceful shutdown must fit.
    assert seconds(shardwire["stop_grace_period"]) > config.pool.shutdown_timeout


def test_compose_prometheus_scrapes_the_proxy_and_loads_the_alerts() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    config_path = host_path(prometheus, command_option(prometheus["command"],
                                                       "--config.file"))
    assert config_path == PROMETHEUS_CONFIG
    config = load_yaml(PROMETHEUS_CONFIG)
    rule_files = [config_path.parent / f for f in config["rule_files"]]
    assert ALERTS in rule_files and all(f.is_file() for f in rule_files)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "shardwire"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    metrics = compose_topology().metrics
    assert metrics is not None
    assert targets == [f"shardwire:{metrics.port}"]
    # ShardwireProxyDown watches this job's `up`.
    assert any('up{job="shardwire"}' in expr for expr in alert_queries())


def test_compose_grafana_provisioning() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning is not None and provisioning.is_dir()
    datasources = [ds for f in sorted((provisioning / "datasources").glob("*.yml"))
                   for ds in load_yaml(f)["datasources"]]
    (prom,) = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert prom["url"] == "http://prometheus:9090" and "prometheus" in services
    providers = [p for f in sorted((provisioning / "dashboards").glob("*.yml"))
                 for p in load_yaml(f)["providers"]]
    (provider,) = providers
    dashboards_dir = host_path(grafana, provider["options"]["path"])
    assert dashboards_dir is not None and (dashboards_dir / DASHBOARD.name).is_file()
    assert dashboards_dir / DASHBOARD.name == DASHBOARD
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home is not None:
        assert host_path(grafana, home) == DASHBOARD
    # The dashboard's datasource variable defaults to the provisioned datasource.
    (var,) = [v for v in dashboard()["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == "prometheus" and var["current"]["value"] == prom["uid"]


# --------------------------------------------------------------------------- Kubernetes


def test_k8s_manifests(tmp_path: Path) -> None:
    objects = k8s_objects()
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} <= set(objects)
    deployment = objects["Deployment"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    ctr = container(deployment)
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["replicas"] >= 2

    config_path = PurePosixPath(command_option(ctr["args"], "--config"))
    assert ctr["args"][0] == "serve" and config_path == PurePosixPath(
        "/etc/shardwire/topology.yaml")
    # The ConfigMap is mounted as a directory (subPath mounts never see updates).
    (mount,) = [m for m in ctr["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    assert "subPath" not in mount and "subPathExpr" not in mount
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = objects["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert "items" not in volume["configMap"]
    assert config_path.name in configmap["data"]

    topology = k8s_topology(tmp_path)
    assert topology.metrics is not None and topology.metrics.host == "0.0.0.0"
    assert topology.listen.host == "0.0.0.0"
    assert container_port(ctr, "postgres") == topology.listen.port == 6432
    assert container_port(ctr, "metrics") == topology.metrics.port == 9930
    for probe in ("readinessProbe", "livenessProbe"):
        get = ctr[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert container_port(ctr, get["port"]) == topology.metrics.port, probe

    # SIGKILL only after the preStop hook and the graceful shutdown had their time.
    pre_stop = ctr.get("lifecycle", {}).get("preStop", {})
    sleep = pre_stop.get("sleep", {}).get("seconds", 0)
    if "exec" in pre_stop:
        sleep = float(pre_stop["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > topology.pool.shutdown_timeout + sleep

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(ctr["resources"][kind]), kind
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(topology.metrics.port)
    assert annotations["prometheus.io/path"] == "/metrics"

    service = objects["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["port"]: container_port(ctr, p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {6432: 6432, 9930: 9930}

    pdb = objects["PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_kustomization_lists_the_manifests() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    assert all((K8S / r).is_file() for r in resources)
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(resources) == manifests
    # A configMapGenerator would rename the ConfigMap on every edit: a rollout, not a reload.
    assert "configMapGenerator" not in kustomization


# --------------------------------------------------------------------------- rules, dashboard


def test_alert_rules_are_complete_and_documented() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    readme = README.read_text(encoding="utf-8")
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert rule["alert"] in readme, f"{rule['alert']} is not explained in deploy/README.md"
    exprs = "\n".join(alert_queries())
    for metric in ("shardwire_shard_requests_total", "shardwire_replication_lag_seconds",
                   "shardwire_pool_connections", "shardwire_pool_size",
                   "shardwire_errors_total", "shardwire_shard_up",
                   "shardwire_topology_reloads_total"):
        assert metric in exprs, metric


def test_alert_unit_tests_cover_the_main_alerts() -> None:
    tests = load_yaml(ALERTS_TEST)
    assert tests["rule_files"] == [ALERTS.name]
    firing = {case["alertname"] for test in tests["tests"]
              for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert {"ShardwireHotShard", "ShardwireReplicationLagHigh",
            "ShardwireReplicationLagCritical", "ShardwirePoolSaturated"} <= firing


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_counters_are_only_queried_through_rates(source: str) -> None:
    """A raw counter only grows (and restarts at 0 with the proxy): only rate()/increase()
    of it mean anything."""
    exprs = alert_queries() if source == "alerts" else dashboard_queries()
    for expr in exprs:
        if expr.startswith("label_values("):
            continue
        for match in METRIC_NAME.finditer(expr):
            family = EXPECTED_SERIES.get(match.group())
            if family is None or EXPECTED_FAMILIES[family] == "gauge":
                continue
            before = expr[: match.start()].rstrip()
            assert re.search(r"\b(rate|irate|increase)\($", before), (
                f"{match.group()} not under rate()/increase() in: {expr}")


def test_promql_uses_only_known_metrics() -> None:
    """Every name the alerts and the dashboard query is in the list of exported families
    (typos fail here; the scrape test below checks the running proxy)."""
    used = {m for expr in alert_queries() + dashboard_queries()
            for m in METRIC_NAME.findall(expr)}
    assert used, "no shardwire metric found in the queries"
    assert used <= set(EXPECTED_SERIES), sorted(used - set(EXPECTED_SERIES))
    # and the dashboard shows every family
    shown = {EXPECTED_SERIES[m] for expr in dashboard_queries()
             for m in METRIC_NAME.findall(expr)}
    assert shown == set(EXPECTED_FAMILIES), sorted(set(EXPECTED_FAMILIES) - shown)


def test_dashboard_panels() -> None:
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard()["templating"]["list"]}
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']!r} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            uid = target["datasource"]["uid"]
            assert uid == "${datasource}" or uid == "prometheus", panel["title"]
        for target in panel["targets"]:
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var.startswith("__") or var in variables, (panel["title"], var)


# --------------------------------------------------------------------------- promtool


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not on PATH: run scripts/ensure-system-deps.sh (it installs "
                    "Debian's prometheus package)", pytrace=False)
    return found


def run_promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    result = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True,
                            timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{output}"
    return output


def test_promtool_check_rules() -> None:
    out = run_promtool("check", "rules", ALERTS.name)
    count = sum(len(group["rules"]) for group in load_yaml(ALERTS)["groups"])
    assert f"SUCCESS: {count} rules found" in out


def test_promtool_check_config() -> None:
    # rule_files resolve against the config file's directory (as in the container).
    out = run_promtool("check", "config", PROMETHEUS_CONFIG.name)
    assert "SUCCESS: 1 rule files found" in out


def test_promtool_alert_unit_tests() -> None:
    run_promtool("test", "rules", ALERTS_TEST.name)


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """The dashboard's queries (Grafana variables filled in) as recording rules, which
    promtool parses."""
    rules = []
    for i, expr in enumerate(dashboard_queries()):
        if expr.startswith("label_values("):
            metric = expr[len("label_values("):].split(",")[0].strip()
            expr = metric
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run_promtool("check", "rules", str(path), cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in out


# --------------------------------------------------------------------------- a real scrape

T = "dpl_items"


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory,
             shard_clusters: list[LocalPostgres]) -> Iterator[RunningProxy]:
    """A routing proxy over s0 (with a streaming replica) and s1, after a workload that
    touches every family: single-shard and cross-shard reads and writes, a two-phase
    commit, an error."""
    drop_everywhere(shard_clusters, T)
    run_everywhere(shard_clusters, f"CREATE TABLE {T} (id bigint PRIMARY KEY, v int)")
    replica = shard_clusters[0].make_replica("dpl_s0_replica")
    running: RunningProxy | None = None
    try:
        topology = base_topology(shard_clusters, sharding={"buckets": 64},
                                 tables={T: {"shard_key": "id"}})
        topology["shards"][0]["replicas"] = [replica.dsn("app")]
        # this client reads what it just wrote: from the primaries, not the replica
        topology["reads"] = {"read_your_writes": "1m"}
        running = start_proxy(tmp_path_factory.mktemp("deploy"), topology, name="observed")
        with via(running) as conn:
            for i in range(1, 21):
                conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, %s)", (i, i))
            conn.execute(f"SELECT v FROM {T} WHERE id = 3").fetchall()
            assert conn.execute(f"SELECT count(*) FROM {T}").fetchone() == (20,)
            with conn.transaction():
                conn.execute(f"UPDATE {T} SET v = v + 1")  # both shards: two-phase commit
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1 / 0")
        yield running
        assert_clean_log(running)
    finally:
        if running is not None:
            running.stop()
        replica.destroy()
        drop_everywhere(shard_clusters, T)


def scrape(running: RunningProxy) -> str:
    metrics = running.topology["metrics"]
    url = f"http://{metrics['host']}:{metrics['port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def exported(text: str) -> tuple[dict[str, str], dict[str, set[frozenset[str]]]]:
    """From a scrape: series name -> family kind (from the `# TYPE` lines), and family ->
    the label-name sets of its samples (`le` left out)."""
    kinds: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            for name in series_names(family, kind):
                kinds[name] = kind
    labels: dict[str, set[frozenset[str]]] = {}
    for line in text.splitlines():
        match = re.match(r"(shardwire_[a-z0-9_]+)(?:\{(.*)\})? ", line)
        if match is None:
            continue
        names = frozenset(re.findall(r'(\w+)="', match.group(2) or "")) - {"le"}
        labels.setdefault(family_of(match.group(1)), set()).add(names)
    return kinds, labels


def test_queried_metrics_are_exported(observed: RunningProxy) -> None:
    """Every metric name in alerts.yml and the dashboard is a series a running shardwire
    exports, of the expected kind and with the labels the queries group by."""
    want = {m for expr in alert_queries() + dashboard_queries()
            for m in METRIC_NAME.findall(expr)}
    deadline = time.monotonic() + float(os.environ.get("SHARDWIRE_SCRAPE_WAIT", "5"))
    while True:  # families fed by the health checks appear within a check interval
        kinds, labels = exported(scrape(observed))
        missing = sorted(want - set(kinds))
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, (
        f"queried by deploy/ but not exported by shardwire: {missing}\n"
        f"exported: {sorted(n for n in kinds if n.startswith('shardwire_'))}")
    for name in want:
        family = EXPECTED_SERIES[name]
        assert kinds[name] == EXPECTED_FAMILIES[family], (name, kinds[name])
    for family, expected in EXPECTED_LABELS.items():
        for names in labels.get(family, set()):
            assert names == expected, f"{family} has labels {sorted(names)}"
