"""Metric names in the operations files (alert rules, dashboard) against the names the services export.

An alert on a metric nobody exports never fires and a dashboard panel on one stays empty, silently; these
helpers let a test compare the two sets, so a renamed metric breaks the build instead of the monitoring.
"""

import json
import re
from collections.abc import Iterable
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

# Series Prometheus itself creates for every target, not exported by the services.
SCRAPE_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"})
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?")


def promql_metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and numbers left out)."""
    text = _STRING.sub('""', expression)
    text = _GRAFANA_VARIABLE.sub("1", text)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def alert_expressions(rules_file: Path) -> dict[str, str]:
    """Alert name -> PromQL expression, from a Prometheus rules file."""
    document = yaml.safe_load(rules_file.read_text())
    return {rule.get("alert") or rule["record"]: rule["expr"] for group in document["groups"] for rule in group["rules"]}


def dashboard_expressions(dashboard_file: Path) -> dict[str, str]:
    """Panel title (and target ref) -> PromQL expression, from a Grafana dashboard JSON, rows included."""
    expressions: dict[str, str] = {}

    def visit(panels: Iterable[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    expressions[f"{panel.get('title', '?')} [{target.get('refId', 'A')}]"] = target["expr"]
            visit(panel.get("panels", []))

    visit(json.loads(dashboard_file.read_text()).get("panels", []))
    return expressions


def referenced_metric_names(rules_file: Path, dashboard_file: Path) -> dict[str, set[str]]:
    """Every metric name the alerts and the dashboard select -> where it is used; Prometheus's own series excluded."""
    used: dict[str, set[str]] = {}
    for origin, expressions in (("alert", alert_expressions(rules_file)), ("panel", dashboard_expressions(dashboard_file))):
        for where, expression in expressions.items():
            for name in promql_metric_names(expression) - SCRAPE_SERIES:
                used.setdefault(name, set()).add(f"{origin} {where}")
    return used


def exported_metric_names(exposition: str) -> set[str]:
    """The series names a `/metrics` page lets one query, including those of families with no sample yet."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":  # the parser drops `_total` from the family's name; queries use it
            names.add(family.name if family.name.endswith("_total") else f"{family.name}_total")
        elif family.type in ("histogram", "gaugehistogram"):
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif family.type == "summary":
            names.update((family.name, f"{family.name}_sum", f"{family.name}_count"))
        else:
            names.add(family.name)
    return names
