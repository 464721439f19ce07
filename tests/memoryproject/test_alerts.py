"""docs/alerts.yml and docs/grafana-dashboard.json: well-formed, and about metrics that /metrics really serves.

The rule file is checked against the shape Prometheus' rule loader accepts
(groups, rules, keys, durations, label names), every expression of both files
is parsed as PromQL, and every metric an expression selects must be a sample
name of a real scrape taken after the operations that create them: a
misspelled name, or a histogram selected without its _bucket, fails here
instead of leaving an alert that can never fire.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from memories.ingest import CycleResult, record_heartbeat
from preload.models import RunTrigger
from preload.runs import preload_run, users_of
from tests.factories import AccountWithKey

BASE_DIR = Path(__file__).resolve().parents[2]
ALERTS = BASE_DIR / "docs" / "alerts.yml"
DASHBOARD = BASE_DIR / "docs" / "grafana-dashboard.json"

# prometheus/common model.ParseDuration: units in this order, each at most once; "0" alone is allowed.
DURATION = re.compile(r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
GROUP_KEYS = {"name", "interval", "limit", "query_offset", "labels", "rules"}
ALERT_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
RECORD_KEYS = {"record", "expr", "labels"}
# Grafana's interval variables, replaced by a duration before parsing; any other $variable must sit in a string.
GRAFANA_INTERVAL = re.compile(r"\$__(rate_interval|interval|range)\b")
LABEL_VALUES = re.compile(r"^label_values\(\s*(?P<metric>[^,()]+?)\s*,\s*(?P<label>\w+)\s*\)$")

# sample name -> every label set it was seen with
Scrape = dict[str, list[dict[str, str]]]


# -- the checks -----------------------------------------------------------------------------------------


def is_duration(value: object) -> bool:
    return isinstance(value, str) and (value == "0" or (value != "" and DURATION.match(value) is not None))


def _string_map_problems(where: str, value: object, *, check_names: bool = True) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: not a map"]
    problems = []
    for key, item in value.items():
        if not isinstance(key, str) or (check_names and not LABEL_NAME.match(key)) or key == "__name__":
            problems.append(f"{where}: invalid name {key!r}")
        if not isinstance(item, str):
            problems.append(f"{where}.{key}: not a string")
    return problems


def _rule_problems(where: str, rule: object) -> list[str]:
    if not isinstance(rule, dict):
        return [f"{where}: not a map"]
    problems: list[str] = []
    if ("alert" in rule) == ("record" in rule):
        return [f"{where}: needs exactly one of alert and record"]
    if "alert" in rule:
        unknown = set(rule) - ALERT_KEYS
        if not isinstance(rule["alert"], str) or not rule["alert"]:
            problems.append(f"{where}: empty alert name")
    else:
        unknown = set(rule) - RECORD_KEYS
        if not isinstance(rule["record"], str) or not METRIC_NAME.match(rule["record"]):
            problems.append(f"{where}: invalid record name {rule['record']!r}")
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
    if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
        problems.append(f"{where}: expr missing")
    for key in ("for", "keep_firing_for"):
        if key in rule and not is_duration(rule[key]):
            problems.append(f"{where}.{key}: not a duration: {rule[key]!r}")
    if "labels" in rule:
        problems += _string_map_problems(f"{where}.labels", rule["labels"])
    if "annotations" in rule:
        problems += _string_map_problems(f"{where}.annotations", rule["annotations"])
    return problems


def rule_file_problems(data: object) -> list[str]:
    """What Prometheus' rule loader (rulefmt) would refuse in a parsed rule file; [] if nothing."""
    if not isinstance(data, dict) or set(data) != {"groups"}:
        return ["the file must be a map with the one key groups"]
    groups = data["groups"]
    if not isinstance(groups, list) or not groups:
        return ["groups must be a non-empty list"]
    problems: list[str] = []
    names: set[str] = set()
    for index, group in enumerate(groups):
        where = f"groups[{index}]"
        if not isinstance(group, dict):
            problems.append(f"{where}: not a map")
            continue
        if unknown := set(group) - GROUP_KEYS:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
        name = group.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: name missing")
        elif name in names:
            problems.append(f"{where}: name {name!r} repeated")
        else:
            names.add(name)
        for key in ("interval", "query_offset"):
            if key in group and not is_duration(group[key]):
                problems.append(f"{where}.{key}: not a duration: {group[key]!r}")
        if "limit" in group and (not isinstance(group["limit"], int) or group["limit"] < 0):
            problems.append(f"{where}.limit: not a count")
        if "labels" in group:
            problems += _string_map_problems(f"{where}.labels", group["labels"])
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            problems.append(f"{where}: rules must be a non-empty list")
            continue
        for position, rule in enumerate(rules):
            problems += _rule_problems(f"{where}.rules[{position}]", rule)
    return problems


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """The vector selectors of a PromQL expression (ValueError if it does not parse)."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def expression_problems(expr: str, scrape: Scrape) -> list[str]:
    """Metric names, label names and label values an expression selects that the scrape does not have."""
    try:
        found = selectors(expr)
    except ValueError as error:
        return [f"does not parse ({error}): {expr}"]
    problems = []
    for selector in found:
        name = selector.name
        if name is None:
            problems.append(f"a selector without a metric name: {selector}")
            continue
        if name not in scrape:
            problems.append(f"no metric {name} in /metrics")
            continue
        for matcher in selector.matchers.matchers:
            if not any(matcher.name in labels for labels in scrape[name]):
                problems.append(f"{name} has no label {matcher.name}")
            elif matcher.op == promql_parser.MatchOp.Equal and not any(
                labels.get(matcher.name) == matcher.value for labels in scrape[name]
            ):
                problems.append(f'{name} has no series with {matcher.name}="{matcher.value}"')
    return problems


def alert_expressions(rules: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield f"{panel['title']} {target['refId']}", GRAFANA_INTERVAL.sub("5m", target["expr"])


def parse_scrape(text: str) -> Scrape:
    scrape: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            scrape.setdefault(sample.name, []).append(dict(sample.labels))
    return scrape


# -- a scrape after the operations that create the labelled series --------------------------------------


@pytest.fixture
def scrape(api: APIClient, account: AccountWithKey) -> Scrape:
    # Every operation counts as slow: memory_slow_operations_total gets its series.
    with override_settings(SLOW_OPERATION_MS=0):
        created = api.post(
            "/memory/memories", {"user_id": "u1", "content": "I always book a window seat"}, format="json"
        )
        assert created.status_code == 201, created.content
        for _ in range(2):  # a miss in both tiers, then an L1 hit
            assert api.get(f"/memory/memories/{created.json()['id']}").status_code == 200
        assert api.get("/memory/memories", {"user_id": "u1"}).status_code == 200
        assert api.get("/memory/relevant", {"user_id": "u1", "query": "seat"}).status_code == 200
        preload_run(users=users_of(accounts=[account.account], namespace=None), trigger=RunTrigger.API)
    record_heartbeat(result=CycleResult())
    response = Client().get("/metrics")
    assert response.status_code == 200
    return parse_scrape(response.content.decode())


# -- the tests ------------------------------------------------------------------------------------------


def _rules() -> dict[str, Any]:
    data = yaml.safe_load(ALERTS.read_text())
    assert isinstance(data, dict)
    return data


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def test_the_alert_rules_have_the_shape_prometheus_loads() -> None:
    rules = _rules()

    assert rule_file_problems(rules) == []
    alerts = [name for name, _ in alert_expressions(rules)]
    assert len(alerts) == len(set(alerts)), "alert names repeat"
    # What the issue asks for, at least.
    assert {
        "MemoryCacheHitRateLow",
        "MemoryOperationP95Slow",
        "MemoryProcessorHeartbeatStale",
        "MemoryTranscriptQueueGrowing",
    } <= set(alerts)
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"].get("summary"), rule["alert"]


def test_the_rule_check_refuses_what_prometheus_would() -> None:
    good = _rules()
    broken = copy.deepcopy(good)
    rule = broken["groups"][0]["rules"][0]
    rule["for"] = "5 minutes"
    rule["keep_firing"] = "5m"
    rule["labels"]["bad-name"] = "x"
    rule["annotations"]["summary"] = 3
    broken["groups"].append({"name": good["groups"][0]["name"], "rules": [{"record": "not a name", "expr": "1"}]})

    problems = rule_file_problems(broken)

    assert problems == [
        "groups[0].rules[0]: unknown keys ['keep_firing']",
        "groups[0].rules[0].for: not a duration: '5 minutes'",
        "groups[0].rules[0].labels: invalid name 'bad-name'",
        "groups[0].rules[0].annotations.summary: not a string",
        "groups[1]: name 'memoryproject' repeated",
        "groups[1].rules[0]: invalid record name 'not a name'",
    ]
    assert rule_file_problems({"groups": [{"name": "g", "rules": [{"alert": "A", "record": "b", "expr": "1"}]}]}) == [
        "groups[0].rules[0]: needs exactly one of alert and record"
    ]


@pytest.mark.parametrize(
    ("duration", "valid"),
    [
        ("5m", True),
        ("1h30m", True),
        ("0", True),
        ("250ms", True),
        ("", False),
        ("5", False),
        ("30m1h", False),
        ("1.5h", False),
    ],
)
def test_durations_follow_prometheus_grammar(duration: str, valid: bool) -> None:
    assert is_duration(duration) is valid


def test_the_dashboard_is_a_grafana_dashboard_with_a_datasource_variable() -> None:
    dashboard = _dashboard()

    assert dashboard["schemaVersion"] >= 39
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    expressions = "\n".join(expr for _, expr in dashboard_expressions(dashboard))
    # What the issue asks the dashboard to show.
    for metric in (
        "memory_operation_duration_seconds_bucket",
        "memory_operation_duration_seconds_count",
        "memory_cache_hits_total",
        "raw_queue_depth",
        "memory_processor_heartbeat_age_seconds",
        "memory_db_pool_size",
        "memory_redis_pool_in_use",
        "preload_runs_total",
        "memory_slow_operations_total",
    ):
        assert metric in expressions, metric
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in expressions


def test_every_metric_the_alerts_select_is_served_at_metrics(scrape: Scrape) -> None:
    problems = {name: expression_problems(expr, scrape) for name, expr in alert_expressions(_rules())}

    assert {name: found for name, found in problems.items() if found} == {}


def test_every_metric_the_dashboard_selects_is_served_at_metrics(scrape: Scrape) -> None:
    dashboard = _dashboard()
    problems = {name: expression_problems(expr, scrape) for name, expr in dashboard_expressions(dashboard)}

    assert {name: found for name, found in problems.items() if found} == {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, variable["name"]
            assert any(match["label"] in labels for labels in scrape.get(match["metric"], [])), variable["name"]


def test_a_misspelled_metric_or_label_is_caught(scrape: Scrape) -> None:
    assert expression_problems("rate(memory_cache_hit_total[5m])", scrape) == [
        "no metric memory_cache_hit_total in /metrics"
    ]
    # A histogram is selected by its _bucket, _sum or _count series, never by its own name.
    assert expression_problems("memory_operation_duration_seconds", scrape) == [
        "no metric memory_operation_duration_seconds in /metrics"
    ]
    assert expression_problems('memory_cache_hits_total{tire="l1"}', scrape) == [
        "memory_cache_hits_total has no label tire"
    ]
    assert expression_problems('memory_cache_hits_total{tier="L1"}', scrape) == [
        'memory_cache_hits_total has no series with tier="L1"'
    ]
    assert expression_problems("sum(rate(raw_queue_depth[5m])", scrape)[0].startswith("does not parse")
    # A Grafana variable outside a string is not PromQL.
    assert expression_problems("rate(raw_processed_total[$interval])", scrape)[0].startswith("does not parse")
