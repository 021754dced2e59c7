"""Alerts and the dashboard (docs/operations.md, "Alerts"): the rule file the umbrella chart ships as a
PrometheusRule, its promtool unit tests, the Grafana dashboard, and the metrics both read.

promtool is Prometheus's own checker (Debian's package prometheus; scripts/promtool installs it, and
these tests skip with the reason only where it cannot be). The metric names are checked against what
real gateway, dispatcher and agent processes serve on /metrics, and the new metrics against what they
measure: a Redis nobody listens on, a gateway killed under its agent, a backlog inserted by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.test_end_to_end import wait_online
from streamspace_common.resilience import dependency_of
from streamspace_common.sessions import STATES
from streamspace_testkit import RunEnv, Service, Stack, free_port, wait_until
from streamspace_tools.admin import create_agent_token

# Helm's own YAML parser (helm-python-sdk, as tests/unit/test_deploy_static.py uses); rule files are written
# as JSON, which is YAML too.
helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (scripts/install)")
ROOT = Path(__file__).resolve().parents[2]
UMBRELLA = ROOT / "helm" / "streamspace"
RULES = UMBRELLA / "files" / "alerts.yaml"
DASHBOARD = UMBRELLA / "files" / "dashboard.json"
RULE_TESTS = sorted((ROOT / "tests" / "e2e" / "alerts").glob("*.test.yaml"))
PROMETHEUS_RULE_API = "monitoring.coreos.com/v1/PrometheusRule"
METRIC = re.compile(r"\b(streamspace_[a-z0-9_]+|up)\b(?!\s*\()")


# --------------------------------------------------------------------------- promtool


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool's path; scripts/promtool installs it when missing (as scripts/test does)."""
    if shutil.which("promtool") is None:
        subprocess.run(["bash", str(ROOT / "scripts" / "promtool")], check=False, timeout=600)
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed and scripts/promtool could not install it (needs root and apt-get)")
    return path


def run_promtool(promtool: str, *args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def load_yaml(text: str) -> Any:
    return helm_python.values_from_yaml(text)


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(RULES.read_text())["groups"]
    return groups


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every query of the dashboard."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in panels
        for target in panel.get("targets", [])
    ]


def test_rule_file_passes_promtool_check(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_promtool_check_catches_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """Control: a rule whose expression does not parse fails the check."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(json.dumps({"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "sum(up"}]}]}))
    done = subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0


def test_rule_unit_tests_pass(promtool: str) -> None:
    assert RULE_TESTS
    output = run_promtool(promtool, "test", "rules", *(str(path.relative_to(ROOT)) for path in RULE_TESTS))
    assert "SUCCESS" in output and "FAILED" not in output


def test_every_alert_is_unit_tested_firing() -> None:
    """Each alert has a promtool test case in which it fires (exp_alerts not empty)."""
    firing = set()
    for path in RULE_TESTS:
        for case in load_yaml(path.read_text())["tests"]:
            firing |= {check["alertname"] for check in case.get("alert_rule_test", []) if check.get("exp_alerts")}
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    assert set(names) - firing == set()


def test_every_alert_has_severity_summary_and_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_dashboard_exprs_parse_with_promtool(promtool: str, tmp_path: Path) -> None:
    """Every query of the dashboard, as a recording rule, passes `promtool check rules`."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    rules = [{"record": f"dashboard:query_{index}", "expr": expr} for index, (_, expr) in enumerate(exprs)]
    generated = tmp_path / "dashboard-rules.yaml"
    generated.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = run_promtool(promtool, "check", "rules", str(generated))
    assert f"SUCCESS: {len(rules)} rules found" in output


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "StreamSpace"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


# --------------------------------------------------------------------------- the chart


def render_umbrella(helm: ModuleType, api_versions: list[str], values: dict[str, Any] | None = None) -> list[Any]:
    """The umbrella chart rendered offline as if the cluster served `api_versions`. helm-python-sdk's
    Chart.render does not take them, so its native call is made with the option Helm's own
    `--api-versions` sets."""
    from helm_python import _native

    opts = {"name": "ss", "namespace": "streamspace", "is_install": True, "api_versions": api_versions}
    with helm.Chart.load(UMBRELLA) as chart:
        rendered: dict[str, str] = json.loads(
            _native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts))
        )
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            docs += [load_yaml(part) for part in re.split(r"(?m)^---\s*$", text) if part.strip()]
    return [doc for doc in docs if doc]


@pytest.fixture(scope="module")
def helm() -> ModuleType:
    module: ModuleType = helm_python
    return module


def test_chart_ships_the_rules_as_a_prometheus_rule_where_the_crd_exists(helm: ModuleType) -> None:
    docs = render_umbrella(helm, [PROMETHEUS_RULE_API])
    [rule] = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == rule_groups()  # the very file promtool checks

    assert not [doc for doc in render_umbrella(helm, []) if doc["kind"] == "PrometheusRule"]  # no CRD: none
    switched_off = render_umbrella(helm, [PROMETHEUS_RULE_API], {"prometheusRule": {"enabled": False}})
    assert not [doc for doc in switched_off if doc["kind"] == "PrometheusRule"]
    labelled = render_umbrella(helm, [PROMETHEUS_RULE_API], {"prometheusRule": {"enabled": True, "labels": {"a": "b"}}})
    [rule] = [doc for doc in labelled if doc["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["a"] == "b"


def test_chart_ships_the_dashboard_as_a_configmap(helm: ModuleType) -> None:
    [config_map] = [doc for doc in render_umbrella(helm, []) if doc["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["streamspace.json"]) == json.loads(DASHBOARD.read_text())
    off = render_umbrella(helm, [], {"grafanaDashboard": {"enabled": False}})
    assert not [doc for doc in off if doc["kind"] == "ConfigMap"]


# --------------------------------------------------------------------------- the metrics


def exported_names(text: str) -> set[str]:
    """Every series name a /metrics page can carry: a counter's _total, a histogram's _bucket, _sum,
    _count, whether or not a labelled metric has a child yet (its # TYPE line is there either way)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name} | {sample.name for sample in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def samples(text: str, name: str, **labels: str) -> list[float]:
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]


async def scrape(http: aiohttp.ClientSession, service: Service) -> str:
    async with http.get(service.metrics_url) as response:
        assert response.status == 200
        return await response.text()


def names_used() -> dict[str, set[str]]:
    """Metric name -> where the rules and the dashboard use it."""
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in METRIC.findall(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for where, expr in dashboard_exprs():
        for name in METRIC.findall(expr):
            used.setdefault(name, set()).add(f"dashboard {where}")
    return used


async def test_every_metric_of_the_rules_and_dashboard_is_exported(
    stack: Stack, anon_http: aiohttp.ClientSession, test_env: RunEnv, agent_id: str
) -> None:
    token = await create_agent_token(test_env.database_url, agent_id)
    gateway = stack.gateway("gateway-m")
    dispatcher = stack.dispatcher("dispatcher-m")
    await stack.ready(gateway, dispatcher)
    agent = stack.agent(agent_id, token, [gateway])
    await stack.ready(agent)
    exported = {"up"}  # Prometheus's own, per target
    for service in (gateway, dispatcher, agent):
        exported |= exported_names(await scrape(anon_http, service))
    used = names_used()
    assert len(used) >= 25
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not missing, missing


# --------------------------------------------------------------------------- the new metrics' behaviour


def test_dependency_of_an_error() -> None:
    import asyncpg.exceptions
    import redis.exceptions

    assert dependency_of("dispatch", redis.exceptions.ConnectionError()) == "redis"
    assert dependency_of("upkeep", asyncpg.exceptions.ConnectionDoesNotExistError()) == "postgres"
    assert dependency_of("postgres_idle", OSError("refused")) == "postgres"
    assert dependency_of("gateway", OSError("refused")) == "gateway"
    assert dependency_of("expiry", ConnectionRefusedError()) == "network"  # a loop that talks to several
    assert dependency_of("expiry", ValueError("a bug")) == "internal"


async def test_dependency_errors_count_while_redis_is_unreachable(
    stack: Stack, anon_http: aiohttp.ClientSession
) -> None:
    """A gateway started against a closed Redis port counts redis errors and shows redis down; one
    against the real Redis shows none."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    broken = stack.gateway("gateway-noredis", REDIS_URL=closed)
    healthy = stack.gateway("gateway-redis")
    await stack.ready(broken, healthy)

    async def errors_counted() -> str | None:
        text = await scrape(anon_http, broken)
        counted = sum(samples(text, "streamspace_dependency_errors_total", dependency="redis"))
        return text if counted >= 2 else None

    text = await wait_until(errors_counted, timeout=20)
    assert sum(samples(text, "streamspace_dependency_down", dependency="redis")) >= 1
    healthy_text = await scrape(anon_http, healthy)
    assert sum(samples(healthy_text, "streamspace_dependency_errors_total", dependency="redis")) == 0
    assert sum(samples(healthy_text, "streamspace_dependency_down", dependency="redis")) == 0


async def test_reconnect_latency_and_heartbeat_metrics(
    stack: Stack, http: aiohttp.ClientSession, test_env: RunEnv, agent_id: str
) -> None:
    """The agent's first gateway is killed: it registers with the second, and its reconnect histogram
    holds that one reconnect. The gateway it lands on measures heartbeat gaps and the oldest age."""
    token = await create_agent_token(test_env.database_url, agent_id)
    first, second = stack.gateway("gateway-h1"), stack.gateway("gateway-h2")
    await stack.ready(first, second)
    agent = stack.agent(agent_id, token, [first, second])
    await stack.ready(agent)
    await wait_online(http, second.url, agent_id, "gateway-h1")
    before = await scrape(http, agent)
    assert samples(before, "streamspace_agent_reconnect_seconds_count") == [0.0]  # a first connect is no reconnect

    first.kill()
    await wait_online(http, second.url, agent_id, "gateway-h2")

    async def reconnect_observed() -> str | None:
        text = await scrape(http, agent)
        return text if samples(text, "streamspace_agent_reconnect_seconds_count") == [1.0] else None

    text = await wait_until(reconnect_observed, timeout=20)
    [took] = samples(text, "streamspace_agent_reconnect_seconds_sum")
    assert 0 < took < 20

    heartbeat = 2.0  # support.HEARTBEAT_INTERVAL

    async def heartbeats_measured() -> str | None:
        text = await scrape(http, second)
        gaps = samples(text, "streamspace_gateway_heartbeat_gap_seconds_count")
        return text if gaps and gaps[0] >= 2 else None

    text = await wait_until(heartbeats_measured, timeout=20)
    [age] = samples(text, "streamspace_gateway_heartbeat_age_max_seconds")
    assert 0 < age <= 3 * heartbeat
    [gap_sum] = samples(text, "streamspace_gateway_heartbeat_gap_seconds_sum")
    [gap_count] = samples(text, "streamspace_gateway_heartbeat_gap_seconds_count")
    assert gap_sum / gap_count <= 2 * heartbeat


@pytest.fixture
def backlog_agents(agent_id: str) -> Iterator[tuple[str, str]]:
    yield f"{agent_id}-busy", f"{agent_id}-less"


async def test_backlog_oldest_command_and_sessions_by_state_gauges(
    stack: Stack, anon_http: aiohttp.ClientSession, db: asyncpg.Pool, test_env: RunEnv, backlog_agents: tuple[str, str]
) -> None:
    """Pending commands of two offline agents, inserted by hand: the dispatcher's backlog gauge names the
    busy one with its count, the oldest pending command's age grows, and the sessions gauge matches
    one COUNT by state of the database."""
    busy, less = backlog_agents
    for agent in backlog_agents:
        await create_agent_token(test_env.database_url, agent)
    for agent, count in ((busy, 300), (less, 7)):
        await db.execute(
            "INSERT INTO agent_commands (agent_id, action) SELECT $1, 'PING' FROM generate_series(1, $2::int)",
            agent,
            count,
        )
    dispatcher = stack.dispatcher("dispatcher-b", IDLE_CHECK_INTERVAL="0.5")
    await stack.ready(dispatcher)

    async def backlog_seen() -> str | None:
        text = await scrape(anon_http, dispatcher)
        return text if samples(text, "streamspace_dispatcher_agent_backlog", agent_id=busy) else None

    text = await wait_until(backlog_seen, timeout=20)
    assert samples(text, "streamspace_dispatcher_agent_backlog", agent_id=busy) == [300.0]
    assert samples(text, "streamspace_dispatcher_agent_backlog", agent_id=less) in ([7.0], [])
    assert len(samples(text, "streamspace_dispatcher_agent_backlog")) <= 10
    [oldest] = samples(text, "streamspace_dispatcher_commands_oldest_seconds", status="pending")
    assert oldest > 0
    assert samples(text, "streamspace_dispatcher_commands_oldest_seconds", status="sent") != []

    counts = dict.fromkeys(STATES, 0)
    rows = await db.fetch("SELECT state, count(*) FROM sessions WHERE deleted_at IS NULL GROUP BY state")
    counts.update({row["state"]: row["count"] for row in rows})

    async def sessions_counted() -> dict[str, float] | None:
        text = await scrape(anon_http, dispatcher)
        gauge = {state: samples(text, "streamspace_sessions", state=state) for state in STATES}
        return {state: values[0] for state, values in gauge.items()} if all(gauge.values()) else None

    assert await wait_until(sessions_counted, timeout=20) == counts
    await db.execute("DELETE FROM agent_commands WHERE agent_id = ANY($1)", list(backlog_agents))
