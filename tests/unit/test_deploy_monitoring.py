"""The monitoring deployment files (deploy/prometheus, deploy/grafana) parse, agree with each other and only
refer to metrics the service declares; with Debian's ``prometheus`` installed, promtool checks and unit-tests
the config and the alert rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from care_companion.config import Settings
from care_companion.interop.dicom_metrics import ReceiverMetrics
from care_companion.monitoring.metrics import ServiceMetrics

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD = GRAFANA_DIR / "dashboards" / "care-companion.json"

# Drift and online-performance gauges the service is getting (their names are fixed). They count as known
# until ServiceMetrics declares them; from then on the names it declares are checked against this spec.
NEW_DRIFT_METRICS: dict[str, tuple[str, ...]] = {
    "care_drift_alarm": ("task",),
    "care_drift_p_value": ("task", "test"),
    "care_drift_window_images": ("task",),
    "care_online_sensitivity": ("task",),
    "care_online_specificity": ("task",),
    "care_online_accuracy": ("task",),
    "care_online_confirmed": ("task",),
}
DRIFT_TESTS = {"features", "embedding", "class_mix", "confidence", "rejections"}
EXPECTED_ALERTS = {
    "CareDriftAlarm",
    "CareHighErrorRate",
    "CareHighLatencyP95",
    "CareLowOnlineSensitivity",
    "CareModelNotLoaded",
    "CareServiceDown",
    "CareDicomResultsWaiting",
}
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
# series suffixes prometheus_client writes for each metric type, and the extra label they carry
SUFFIXES: dict[str, tuple[tuple[str, set[str]], ...]] = {
    "counter": (("_total", set()), ("_created", set())),
    "gauge": (("", set()),),
    "histogram": (("_bucket", {"le"}), ("_count", set()), ("_sum", set()), ("_created", set())),
    "summary": (("", {"quantile"}), ("_count", set()), ("_sum", set()), ("_created", set())),
    "info": (("_info", set()),),
}
METRIC_TOKEN = re.compile(r"\bcare_[a-zA-Z0-9_:]*")
PROSE_METRIC = re.compile(r"\bcare_[a-zA-Z0-9_]*")
SELECTOR = re.compile(r"\b(care_[a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH: install the Debian package `prometheus` (apt-get install prometheus)",
)


def label_names(metrics: ServiceMetrics | ReceiverMetrics) -> dict[str, tuple[str, ...]]:
    """Label names of the metric objects a metrics holder keeps as attributes, by metric (family) name."""
    found: dict[str, tuple[str, ...]] = {}
    for value in vars(metrics).values():
        name, labelnames = getattr(value, "_name", None), getattr(value, "_labelnames", None)
        if isinstance(name, str) and isinstance(labelnames, tuple):
            found[name.removesuffix("_total")] = labelnames
    return found


@cache
def declared_series() -> dict[str, set[str] | None]:
    """Every series name the service can expose, with its label names (None: any labels, e.g. info metrics).

    Names come from rendering ServiceMetrics and from the metric families of its registry and the DICOM
    receiver's (a labelled metric with no children yet renders nothing, but its family is still collected);
    label names from the metric objects.
    """
    metrics = ServiceMetrics()
    series: dict[str, set[str] | None] = {}
    for holder in (metrics, ReceiverMetrics()):
        labels_of = label_names(holder)
        for family in holder.registry.collect():
            base = family.name
            for suffix, extra in SUFFIXES.get(family.type, (("", set()),)):
                known = labels_of.get(base)
                series[base + suffix] = None if known is None or family.type == "info" else {*known, *extra}
    for line in metrics.render().decode().splitlines():
        if line and not line.startswith("#"):
            series.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], None)
    for name, labels in NEW_DRIFT_METRICS.items():  # until ServiceMetrics declares them
        series.setdefault(name, set(labels))
    return series


def metric_families() -> set[str]:
    """Family names as written in prose (e.g. ``care_batch_size`` for the histogram's series)."""
    holders = (ServiceMetrics(), ReceiverMetrics())
    return {family.name for holder in holders for family in holder.registry.collect()} | set(NEW_DRIFT_METRICS)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_panels(panels: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in DASHBOARD_JSON["panels"] if panels is None else panels:
        found.append(panel)
        found.extend(dashboard_panels(panel.get("panels", [])))
    return found


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets, template variables, annotations."""
    queries = [t["expr"] for panel in dashboard_panels() for t in panel.get("targets", []) if t.get("expr")]
    for variable in DASHBOARD_JSON["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    queries += [a["expr"] for a in DASHBOARD_JSON["annotations"]["list"] if a.get("expr")]
    return queries


def unknown_references(expr: str) -> list[str]:
    """What ``expr`` refers to that the service does not expose: series names, then labels of a selector."""
    known = declared_series()
    code = STRING.sub('""', expr)  # label values and regexes are not metric names
    problems = [name for name in METRIC_TOKEN.findall(code) if name not in known]
    for name, matchers in SELECTOR.findall(code):
        allowed = known.get(name)
        if allowed is None:
            continue
        problems += [
            f"{name}{{{label}}}" for label in MATCHER.findall(matchers) if label not in allowed | SCRAPE_LABELS
        ]
    return problems


DASHBOARD_JSON: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "path", [PROMETHEUS_CONFIG, ALERTS, ALERTS_TEST, DATASOURCES, DASHBOARD_PROVIDERS], ids=lambda p: p.name
)
def test_yaml_files_parse(path: Path) -> None:
    assert isinstance(load_yaml(path), dict)


def test_dashboard_is_a_grafana_dashboard() -> None:
    assert DASHBOARD_JSON["uid"] == "care-companion" and DASHBOARD_JSON["title"]
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard_panels():
        if panel["type"] != "row":
            assert panel["targets"], f"panel {panel['title']!r} has no query"
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, panel["title"]


def test_dashboard_shows_what_operators_need() -> None:
    queries = "\n".join(dashboard_queries())
    for needed in (
        "care_http_requests_total",  # request and error rate
        'status=~"5.."',
        "histogram_quantile(0.95, sum by (endpoint, le) (rate(care_http_request_seconds_bucket",
        "care_predictions_total",
        "care_prediction_confidence_bucket",
        "care_rejected_inputs_total",
        "care_model_loaded",
        "care_model_info",
        "care_drift_alarm",
        "care_drift_p_value",
        "care_drift_window_images",
        "care_online_sensitivity",
        "care_online_specificity",
        "care_online_confirmed",
    ):
        assert needed in queries, f"no dashboard query uses {needed}"
    p_values = next(p for p in dashboard_panels() if "care_drift_p_value" in str(p.get("targets")))
    assert "test" in p_values["targets"][0]["legendFormat"], "p-values must be plotted per test"


def test_grafana_provisioning_matches_the_dashboard() -> None:
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"].endswith(":9090")
    selector = next(v for v in DASHBOARD_JSON["templating"]["list"] if v["type"] == "datasource")
    assert selector["current"]["value"] == datasource["uid"], "the dashboard's default datasource is not provisioned"
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_prometheus_scrapes_the_service_and_loads_the_rules() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert [(PROMETHEUS_CONFIG.parent / f).resolve() for f in config["rule_files"]] == [ALERTS.resolve()]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "care-companion")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert any(t.endswith(":8000") for sc in job["static_configs"] for t in sc["targets"])
    dicom = next(j for j in config["scrape_configs"] if j["job_name"] == "care-dicom")
    default_port = Settings.model_fields["dicom_metrics_port"].default
    assert any(t.endswith(f":{default_port}") for sc in dicom["static_configs"] for t in sc["targets"])
    assert load_yaml(ALERTS_TEST)["rule_files"] == ["alerts.yml"]


def test_every_alert_has_a_duration_severity_and_explanation() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule.get("for"), f"{rule['alert']} has no `for:`"
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 60, rule["alert"]
    by_name = {rule["alert"]: rule for rule in rules}
    assert "retrain --if-needed" in by_name["CareDriftAlarm"]["annotations"]["description"]
    assert by_name["CareLowOnlineSensitivity"]["labels"]["severity"] == "critical"
    assert 'up{job="care-companion"}' in by_name["CareServiceDown"]["expr"]


def test_every_alert_is_unit_tested() -> None:
    tests = load_yaml(ALERTS_TEST)["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert firing == EXPECTED_ALERTS, f"alerts never tested firing: {EXPECTED_ALERTS - firing}"
    assert quiet == EXPECTED_ALERTS, f"alerts never tested quiet: {EXPECTED_ALERTS - quiet}"


def test_the_predict_endpoint_label_matches_the_service_routes() -> None:
    """The latency alert filters on the ``endpoint`` label, which the service sets to the route template with
    the task's name in place of ``{task}``."""
    from care_companion.serving.middleware import endpoint_and_task
    from care_companion.serving.routes import predict_router

    paths = frozenset(getattr(route, "path", "") for route in predict_router().routes)
    labels = {endpoint_and_task({"path": f"/v1/predict/{task}"}, paths) for task in ("chest", "wrist")}
    assert labels == {("/v1/predict/chest", "chest"), ("/v1/predict/wrist", "wrist")}
    assert all(re.fullmatch(r"/v1/predict/.+", endpoint) for endpoint, _ in labels)
    latency = next(rule for rule in alert_rules() if rule["alert"] == "CareHighLatencyP95")
    assert 'endpoint=~"/v1/predict/.+"' in latency["expr"]


def test_alert_rules_refer_only_to_declared_metrics() -> None:
    families = metric_families()
    problems = {}
    for rule in alert_rules():
        found = unknown_references(rule["expr"])
        prose = " ".join(rule["annotations"].values())
        found += [n for n in PROSE_METRIC.findall(prose) if n not in declared_series() and n not in families]
        if found:
            problems[rule["alert"]] = found
    assert not problems, f"alert rules refer to metrics or labels the service does not expose: {problems}"


def test_dashboard_refers_only_to_declared_metrics() -> None:
    problems = {q: found for q in dashboard_queries() if (found := unknown_references(q))}
    assert not problems, f"dashboard queries refer to metrics or labels the service does not expose: {problems}"


def test_new_drift_metrics_match_their_spec_once_declared() -> None:
    metrics = ServiceMetrics()
    families = {family.name: family.type for family in metrics.registry.collect()}
    declared = {name for name in NEW_DRIFT_METRICS if name in families}
    if not declared:
        pytest.skip("ServiceMetrics does not declare the drift/online gauges yet; NEW_DRIFT_METRICS stands in")
    assert declared == set(NEW_DRIFT_METRICS), f"only some drift gauges are declared: {sorted(declared)}"
    labels = label_names(metrics)
    for name, expected in NEW_DRIFT_METRICS.items():
        assert families[name] == "gauge", f"{name} is a {families[name]}, not a gauge"
        if name in labels:
            assert set(labels[name]) == set(expected), f"{name} has labels {labels[name]}, not {expected}"
    rendered = metrics.render().decode()
    tests = set(re.findall(r'care_drift_p_value\{[^}]*test="([^"]+)"', rendered))
    assert tests <= DRIFT_TESTS, f"unexpected drift test names {tests - DRIFT_TESTS}"


@needs_promtool
def test_promtool_check_config() -> None:
    done = subprocess.run([str(PROMTOOL), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    done = subprocess.run([str(PROMTOOL), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(EXPECTED_ALERTS)} rules found" in done.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    done = subprocess.run(
        [str(PROMTOOL), "test", "rules", ALERTS_TEST.name], cwd=PROMETHEUS_DIR, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
