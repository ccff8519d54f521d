"""deploy/: the plant's Prometheus, Alertmanager and Grafana files, checked by the engines' own tools."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
EXAMPLE_TARGETS = DEPLOY / "prometheus" / "targets" / "lines.yml.example"
GRAFANA = DEPLOY / "grafana" / "provisioning"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is installed by scripts/install-system-deps.sh"
    return path


def test_prometheus_config_passes_promtool_with_the_alert_rules():
    res = subprocess.run([tool("promtool"), "check", "config", str(PROMETHEUS)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    # promtool follows rule_files: the relative path reaches the repository's rules, and they load.
    assert "SUCCESS: 1 rule files found" in res.stdout
    assert re.search(r"Checking \S*dashboards/alert-rules\.yml\n\s+SUCCESS: \d+ rules found", res.stdout), res.stdout


def test_the_example_targets_pass_promtool_and_name_a_line_each(tmp_path):
    # promtool checks file_sd files that match the config's glob: stage the example as a real targets file.
    conf = tmp_path / "prometheus.yml"
    conf.write_text(PROMETHEUS.read_text().replace("../../dashboards/", f"{REPO}/dashboards/"))
    (tmp_path / "targets").mkdir()
    shutil.copy(EXAMPLE_TARGETS, tmp_path / "targets" / "lines.yml")
    res = subprocess.run([tool("promtool"), "check", "config", str(conf)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    groups = yaml.safe_load(EXAMPLE_TARGETS.read_text())
    lines = [g["labels"]["line"] for g in groups]
    assert len(lines) == len(set(lines)) >= 2
    addresses = [t for g in groups for t in g["targets"]]
    assert len(addresses) == len(set(addresses))


def test_the_example_targets_are_not_scraped_as_they_are():
    # Made-up hosts in a file Prometheus reads would raise AnomalyMonitorDown for machines that do not exist.
    glob = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"][0]["file_sd_configs"][0]["files"][0]
    assert not list(PROMETHEUS.parent.glob(glob))
    assert EXAMPLE_TARGETS.exists()


def test_the_scrape_job_is_the_one_the_down_alert_watches():
    job = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"][0]["job_name"]
    assert f'up{{job="{job}"}}' in (REPO / "dashboards" / "alert-rules.yml").read_text()


def test_alertmanager_config_passes_amtool():
    res = subprocess.run([tool("amtool"), "check-config", str(ALERTMANAGER)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@pytest.mark.parametrize("labels, receiver", [
    ({"alertname": "AnomalyMonitorDown", "severity": "critical", "line": "line3"}, "maintenance-oncall"),
    ({"alertname": "AnomalyMonitorSourceDown", "severity": "warning", "line": "line3"}, "hall-b-shift"),
    ({"alertname": "AnomalyMonitorSourceDown", "severity": "warning", "line": "line1"}, "quality-team"),
    ({"alertname": "AnomalyMonitorThresholdDrift", "severity": "warning", "line": "line2"}, "quality-team"),
])
def test_alerts_are_routed_by_severity_and_line(labels, receiver):
    res = subprocess.run([tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                          *(f"{k}={v}" for k, v in labels.items())], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split() == [receiver]


def test_grafana_datasource_is_one_default_prometheus():
    doc = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yml").read_text())
    assert doc["apiVersion"] == 1
    [source] = doc["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy" and source["isDefault"] is True
    assert re.match(r"^https?://[^/]+(:\d+)?/?$", source["url"]), source["url"]
    # Grafana's $__rate_interval assumes this scrape interval: it must be Prometheus's own.
    assert source["jsonData"]["timeInterval"] == yaml.safe_load(PROMETHEUS.read_text())["global"]["scrape_interval"]


def test_grafana_dashboard_provider_reads_a_folder_the_dashboard_can_be_provisioned_from():
    doc = yaml.safe_load((GRAFANA / "dashboards" / "anomaly-monitor.yml").read_text())
    assert doc["apiVersion"] == 1
    [provider] = doc["providers"]
    assert provider["type"] == "file" and Path(provider["options"]["path"]).is_absolute()
    assert provider["allowUiUpdates"] is False
    # A provisioned dashboard cannot ask for its data source as an import does (`__inputs`, ${DS_...}): it
    # must pick it itself, through its datasource variable.
    text = (REPO / "dashboards" / "anomaly-monitor.json").read_text()
    dashboard = json.loads(text)
    assert "__inputs" not in dashboard and "${DS_" not in text
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert dashboard["uid"]
