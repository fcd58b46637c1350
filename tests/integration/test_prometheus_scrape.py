"""A real Prometheus (Debian's ``prometheus``) scrapes a running ``care-companion serve`` with the shipped
scrape config and alert rules: it stores what the service reports, evaluates every rule without error, and
every dashboard query is valid PromQL."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from care_companion.config import Settings
from care_companion.records.db import upgrade
from tests.processes import free_port, running, service_env, tail, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "care-companion.json"
PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
CLI = Path(sys.executable).with_name("care-companion")
HEALTH_CALLS = 3


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``care-companion serve`` on a free port with a migrated SQLite database and no model to serve
    (the configured bundle folders do not exist, so no model registry is consulted)."""
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed: install the Debian package `prometheus` (apt-get install prometheus)")
    data_dir = tmp_path / "care-data"
    upgrade(Settings(data_dir=data_dir).db_url)
    port = free_port()
    env = service_env(
        data_dir,
        port,
        chest_model=str(tmp_path / "no-chest-bundle"),
        wrist_model=str(tmp_path / "no-wrist-bundle"),
    )
    log = tmp_path / "service.log"
    url = f"http://127.0.0.1:{port}"
    with running(
        [str(CLI), "serve", "--log-level", "warning"], log=log, ready_url=f"{url}/health", what="the service", env=env
    ):
        yield url, log


@pytest.fixture
def prometheus(tmp_path: Path, service: tuple[str, Path]) -> Iterator[tuple[str, Path]]:
    """Prometheus on a free loopback port: the shipped config and rules, scraping the service every second."""
    service_url, _ = service
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    port = free_port()
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
    config["rule_files"] = [str((PROMETHEUS_CONFIG.parent / f).resolve()) for f in config["rule_files"]]
    for job in config["scrape_configs"]:
        job |= {"scrape_interval": "1s", "scrape_timeout": "1s"}
        target = service_url.removeprefix("http://") if job["job_name"] == "care-companion" else f"127.0.0.1:{port}"
        for static in job["static_configs"]:
            static["targets"] = [target]
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    url = f"http://127.0.0.1:{port}"
    args = [
        str(PROMETHEUS),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with running(args, log=log, ready_url=f"{url}/-/ready", what="prometheus", timeout=60, cwd=tmp_path):
        yield url, log


def _query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def _service_value(service_url: str, sample_name: str, labels: dict[str, str]) -> float:
    """What the service itself reports at /metrics for one sample."""
    text = httpx.get(f"{service_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"the service does not report {sample_name}{labels}:\n{text}")


def test_prometheus_scrapes_the_service(service: tuple[str, Path], prometheus: tuple[str, Path]) -> None:
    service_url, service_log = service
    prometheus_url, prometheus_log = prometheus

    def logs() -> str:
        return f"--- service\n{tail(service_log)}\n--- prometheus\n{tail(prometheus_log)}"

    for _ in range(HEALTH_CALLS):
        assert httpx.get(f"{service_url}/health", timeout=10).status_code == 200
    not_ready = httpx.get(f"{service_url}/ready", timeout=10)
    assert not_ready.status_code == 503, not_ready.text  # no model loaded
    health = {"endpoint": "/health", "method": "GET", "status": "200"}
    expected_health = _service_value(service_url, "care_http_requests_total", health)
    assert expected_health >= HEALTH_CALLS + 1  # ours and the fixture's readiness polls
    loaded = _service_value(service_url, "care_model_loaded", {"task": "chest"})
    assert loaded == 0.0

    selector = 'care_http_requests_total{job="care-companion", endpoint="/health", method="GET", status="200"}'

    def scraped_health() -> list[dict[str, Any]]:
        result = _query(prometheus_url, selector)
        return result if result and float(result[0]["value"][1]) == expected_health else []

    (health_series,) = wait_for(f"prometheus did not store {selector} = {expected_health}", scraped_health, 30, logs)
    assert health_series["metric"]["instance"] == service_url.removeprefix("http://")
    (up,) = _query(prometheus_url, 'up{job="care-companion"}')
    assert up["value"][1] == "1"
    (model,) = _query(prometheus_url, 'care_model_loaded{job="care-companion", task="chest"}')
    assert float(model["value"][1]) == loaded
    (served,) = _query(prometheus_url, 'care_http_requests_total{job="care-companion", endpoint="/ready"}')
    assert served["metric"]["status"] == "503"
    assert float(served["value"][1]) == _service_value(
        service_url, "care_http_requests_total", {"endpoint": "/ready", "status": "503"}
    )

    # the shipped rules load and evaluate against the live series without error; no model: pending alert
    def evaluated_rules() -> list[dict[str, Any]]:
        groups = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule.get("lastEvaluation", "").startswith("2") for rule in rules) else []

    rules = wait_for("prometheus did not evaluate the alert rules", evaluated_rules, 30, logs)
    assert {rule["name"] for rule in rules} >= {"CareModelNotLoaded", "CareServiceDown", "CareDriftAlarm"}
    assert all(rule["health"] == "ok" for rule in rules), json.dumps(rules, indent=1)

    def not_loaded_pending() -> list[dict[str, Any]]:
        return _query(prometheus_url, 'ALERTS{alertname="CareModelNotLoaded", alertstate="pending"}')

    pending = wait_for("CareModelNotLoaded did not become pending", not_loaded_pending, 30, logs)
    assert {alert["metric"]["task"] for alert in pending} == {"chest", "wrist"}
    assert all(alert["metric"]["severity"] == "critical" for alert in pending)
    assert not _query(prometheus_url, 'ALERTS{alertname="CareServiceDown"}')

    # every dashboard query parses and runs (Grafana's variables replaced by what "All" sends)
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []) if t.get("expr")]
    queries += [a["expr"] for a in dashboard["annotations"]["list"] if a.get("expr")]
    assert queries
    for expr in queries:
        concrete = (
            expr.replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$instance", ".*")
            .replace("$task", ".*")
        )
        _query(prometheus_url, concrete)
