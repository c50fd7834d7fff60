"""The Prometheus config, the alert rules (with promtool's own unit tests of them) and the Grafana dashboard.

Whether the metric names they use are ones the services really export is checked against the running services
in tests/bot/test_stack.py (test_deploy_files_use_only_metrics_the_services_export)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from supportflow.ops import alert_expressions, dashboard_expressions, promql_metric_names, referenced_metric_names

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "supportflow-dashboard.json"


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    if executable is None:
        pytest.fail("promtool is missing: `make system-deps` installs Debian's prometheus package, which has it")
    return subprocess.run([executable, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_scrape_config_and_the_rules(tmp_path: Path) -> None:
    """Checked in a copy of the repository's layout, where the token file a running stack keeps exists (promtool
    requires it): /metrics needs the internal token, and every scrape job sends it."""
    copy = tmp_path / "deploy" / "prometheus"
    shutil.copytree(PROMETHEUS, copy)
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run" / "internal_token").write_text("a-token")
    config = promtool("check", "config", "prometheus.yml", cwd=copy)
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 1 rule files found" in config.stdout + config.stderr
    jobs = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    tokens = {job["job_name"]: (copy / job["authorization"]["credentials_file"]).resolve() for job in jobs}
    assert set(tokens.values()) == {(tmp_path / ".run" / "internal_token").resolve()}, tokens  # the stack's token file
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_the_alerts_fire_when_they_should_and_not_otherwise() -> None:
    """deploy/prometheus/alerts_test.yml: a fallback spike, a trickle of turns (no alarm), slow turns, slow and failing
    classifications, a service going down; each case with the labels and annotations the alert must carry."""
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts_test.yml").read_text()))
    assert set(alert_expressions(PROMETHEUS / "alerts.yml")) <= tested


def test_the_kubernetes_scrape_config_finds_the_annotated_pods() -> None:
    result = promtool("check", "config", "prometheus-kubernetes.yml")
    output = result.stdout + result.stderr
    # Debian builds Prometheus without Kubernetes discovery; anything else promtool says is a real error.
    assert result.returncode == 0 or "field kubernetes_sd_configs not found" in output, output
    config = yaml.safe_load((PROMETHEUS / "prometheus-kubernetes.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["authorization"]["credentials_file"].endswith("/internal_token")  # /metrics needs the internal token
    relabel = {tuple(r["source_labels"]): r for r in job["relabel_configs"]}
    assert relabel[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]["action"] == "keep"
    assert relabel[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)]["target_label"] == "job"
    jobs = re.search(r'up\{job=~"([^"]+)"\}', alert_expressions(PROMETHEUS / "alerts.yml")["SupportflowServiceDown"]).group(1)
    annotated = set()
    for path in (ROOT / "deploy" / "k8s").glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            template = (document or {}).get("spec", {}).get("template", {})
            if template.get("metadata", {}).get("annotations", {}).get("prometheus.io/scrape") == "true":
                annotated.add(template["metadata"]["labels"]["app.kubernetes.io/name"])
    assert annotated == {"supportflow-bot", "supportflow-classifier"}
    assert all(re.fullmatch(jobs, name) for name in annotated), f"the alerts' job pattern {jobs} misses one of {annotated}"


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel's query as a recording rule (Grafana's $__ variables given fixed values)."""
    expressions = dashboard_expressions(DASHBOARD)
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_{i}", "expr": re.sub(r"\$__(rate_interval|interval|range)", "5m", expression)}
                    for i, expression in enumerate(expressions.values())
                ],
            }
        ]
    }
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in result.stdout


def test_the_dashboard_has_the_panels_operations_need_on_a_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert dashboard["templating"]["list"][0] == {**dashboard["templating"]["list"][0], "type": "datasource", "query": "prometheus"}
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    by_metric = {name: p for p in panels for t in p["targets"] for name in promql_metric_names(t["expr"])}
    assert by_metric["supportflow_intent_confidence_bucket"]["type"] == "heatmap"
    assert by_metric["supportflow_turn_latency_seconds_bucket"]["type"] in {"heatmap", "timeseries"}
    assert any(p["type"] == "heatmap" and "turn_latency" in p["targets"][0]["expr"] for p in panels)
    titles = {p["title"] for p in panels}
    assert {"Fallbacks per minute", "Classify latency p50 / p99", "Turns per minute by route", "Intent confidence"} <= titles
    assert "* 60" in next(p for p in panels if p["title"] == "Fallbacks per minute")["targets"][0]["expr"]
    ratings = by_metric["supportflow_ratings_total"]  # customers' helpful / not helpful, and the unhelpful share
    assert ratings["title"] == "Customer ratings" and any('rating="unhelpful"' in t["expr"] for t in ratings["targets"])


def test_metric_names_are_read_out_of_promql() -> None:
    expression = (
        'histogram_quantile(0.99, sum by (le) (rate(bentoml_service_request_duration_seconds_bucket{endpoint="/a b"}[5m])))'
        " > 2.5 and on() sum(increase(supportflow_turns_total[$__rate_interval] offset 1h)) / clamp_min(vector(1), 1e-9) > 0"
    )
    assert promql_metric_names(expression) == {"bentoml_service_request_duration_seconds_bucket", "supportflow_turns_total"}
    assert promql_metric_names('up{job=~"supportflow-(bot|classifier)"} == bool 0') == {"up"}
    used = referenced_metric_names(PROMETHEUS / "alerts.yml", DASHBOARD)
    assert "up" not in used and {"supportflow_fallbacks_total", "supportflow_turns_total"} <= set(used)
    assert any(where.startswith("alert SupportflowFallbackRateHigh") for where in used["supportflow_fallbacks_total"])


def test_grafana_provisioning_loads_the_dashboard_from_prometheus() -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] and source["url"] == "${PROMETHEUS_URL}"
    assert source["jsonData"]["timeInterval"] == yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["global"]["scrape_interval"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "supportflow.yaml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].endswith("/supportflow")
