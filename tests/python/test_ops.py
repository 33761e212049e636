"""The monitoring files in ops/ against the real binaries: the Prometheus
rules and the Grafana dashboard load, and every metric they name is one
the collector or the aggregator exports."""

import json
import re
import urllib.error
import urllib.request

import yaml

from conftest import REPO

METRIC = re.compile(r"\bedgetally_[a-z0-9_]+")


def exported(url):
    """Every sample name the /metrics text at `url` can carry, from its
    TYPE lines: counters end in _total, histograms have _bucket, _sum and
    _count."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    names = set()
    for line in text.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split()
        if kind == "counter":
            names.add(name if name.endswith("_total") else f"{name}_total")
        elif kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


def known_metrics(stack):
    """What both binaries export, after one refused request: a labelled
    family shows in /metrics only once it has a sample."""
    try:
        urllib.request.urlopen(f"{stack.collector_url}/no-such-route", timeout=10)
    except urllib.error.HTTPError as error:
        assert error.code == 404
    return exported(stack.collector_url) | exported(stack.aggregator_http_url)


def test_alert_rules_are_well_formed_and_name_real_metrics(stack):
    rules = yaml.safe_load((REPO / "ops" / "prometheus" / "edgetally-alerts.yml").read_text())
    known = known_metrics(stack)
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 15
    assert len({rule["alert"] for rule in alerts}) == len(alerts), "alert names are unique"
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        unknown = set(METRIC.findall(rule["expr"])) - known
        assert not unknown, f"{rule['alert']} names metrics no binary exports: {unknown}"


def test_dashboard_panels_name_real_metrics(stack):
    dashboard = json.loads((REPO / "ops" / "grafana" / "edgetally.json").read_text())
    known = known_metrics(stack)
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 13
    for expr in exprs:
        names = set(METRIC.findall(expr))
        assert names, expr
        assert names <= known, f"{expr} names metrics no binary exports: {names - known}"
