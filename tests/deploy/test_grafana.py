"""The Grafana dashboard and compose's `monitoring` profile, tested without Docker: every query
names a metric the module really exports, and the files Prometheus and Grafana get fit together."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client import Info
from prometheus_client.metrics import MetricWrapperBase

from edgeinfer.observability.metrics import Metrics
from tests.support import ROOT

DEPLOYMENT = ROOT / "deployment"
DASHBOARD = DEPLOYMENT / "grafana" / "edgeinfer.json"
#: The labels app.py gives edgeinfer_model_info; dashboards join on module_id and version.
INFO_LABELS = ("module_id", "name", "version", "format", "runtime", "sha256")
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


AGGREGATIONS = _words(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk "
    "limit_ratio"
)
FUNCTIONS = _words(
    "abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week "
    "day_of_year days_in_month delta deriv exp floor histogram_avg histogram_count "
    "histogram_fraction histogram_quantile histogram_stddev histogram_stdvar histogram_sum "
    "holt_winters double_exponential_smoothing hour idelta increase info irate label_join "
    "label_replace ln log2 log10 minute month predict_linear rate resets round scalar sgn sort "
    "sort_desc sort_by_label sort_by_label_desc sqrt time timestamp vector year avg_over_time "
    "min_over_time max_over_time sum_over_time count_over_time quantile_over_time "
    "stddev_over_time stdvar_over_time last_over_time present_over_time mad_over_time acos acosh "
    "asin asinh atan atanh cos cosh sin sinh tan tanh deg rad pi start end"
)
KEYWORDS = _words("bool offset and or unless atan2 inf nan")

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_TOKEN = re.compile(r"(?P<number>\d[\w.]*)|(?P<name>[A-Za-z_:][\w:]*)\s*(?P<call>\(?)")
_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:(?P<expr>.*),)?\s*(?P<label>\w+)\s*\)\s*$", re.S
)


class PromQLError(ValueError):
    """A query the checker cannot read: an unknown function, say."""


def _bare(expr: str) -> str:
    """The expression without string literals and Grafana variables."""
    return _VARIABLES.sub("", _STRINGS.sub('""', expr))


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: not its functions, keywords, labels,
    strings, durations or Grafana variables. Raises PromQLError on a call to an unknown function."""
    text = _GROUPING.sub(" ", _RANGES.sub(" ", _MATCHERS.sub(" ", _bare(expr))))
    names: set[str] = set()
    for token in _TOKEN.finditer(text):
        name = token.group("name")
        if name is None or name.lower() in KEYWORDS:
            continue
        if token.group("call"):
            if name not in FUNCTIONS | AGGREGATIONS:
                raise PromQLError(f"unknown function {name}( in {expr!r}")
            continue
        names.add(name)
    return names


def label_names(expr: str) -> set[str]:
    """The label names a PromQL expression matches on or groups by."""
    text = _bare(expr)
    labels: set[str] = set()
    for matcher in _MATCHERS.findall(text):
        labels |= set(_MATCHER_LABEL.findall(matcher))
    for group in _GROUPING.findall(text):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return labels


def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows too."""
    for panel in panels:
        yield panel
        yield from walk(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def queries(doc: dict[str, Any]) -> Iterator[tuple[str, str, set[str]]]:
    """(where, PromQL, labels it names) for every panel target and every query variable, whose
    label_values(expr, label) gives expr and its label."""
    for panel in walk(doc["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            yield f"panel {panel['title']!r} {target['refId']}", expr, label_names(expr)
    for variable in doc["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        found = _LABEL_VALUES.match(text)
        assert found, f"variable {variable['name']}: only label_values(...) is checked: {text}"
        expr = found.group("expr") or ""
        yield f"variable {variable['name']}", expr, label_names(expr) | {found.group("label")}


def exported() -> tuple[set[str], set[str]]:
    """The sample names and label names a real Metrics() exports, each labelled metric touched."""
    metrics = Metrics()
    for value in vars(metrics).values():
        if isinstance(value, Info):
            value.info(dict.fromkeys(INFO_LABELS, "x"))
        elif isinstance(value, MetricWrapperBase) and value._labelnames:
            value.labels(*("x" for _ in value._labelnames))
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    labels: set[str] = set(TARGET_LABELS)
    for family in metrics.registry.collect():
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        for sample in family.samples:
            names.add(sample.name)
            labels |= set(sample.labels)
    return names, labels


def unknown_metrics(exprs: list[str], known: set[str]) -> dict[str, set[str]]:
    """The names each expression selects that the module does not export."""
    out = {expr: metric_names(expr) - known for expr in exprs}
    return {expr: names for expr, names in out.items() if names}


def test_the_extractor_reads_promql_not_words() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, module_id) (rate(a_bucket{reason=~"x (y) z", '
        'version!="$version"}[$__rate_interval] offset 5m))) * on(job, instance) '
        'group_left(version, name) b_info{module_id=~"${module}"} > bool 0 or vector(1e-3) '
        "unless sum(c_total) without (kind) and ignoring(le) d"
    )
    assert metric_names(expr) == {"a_bucket", "b_info", "c_total", "d"}
    assert label_names(expr) == {
        "le",
        "module_id",
        "reason",
        "version",
        "job",
        "instance",
        "name",
        "kind",
    }
    with pytest.raises(PromQLError, match="rte"):
        metric_names("sum(rte(a_total[5m]))")


def test_a_misspelled_metric_fails_the_check() -> None:
    """So that the dashboard check cannot pass by finding nothing."""
    known, _ = exported()
    assert "edgeinfer_messages_received_total" in known
    typo = "sum by (module_id) (rate(edgeinfer_readings_recieved_total[$__rate_interval]))"
    assert unknown_metrics([typo], known) == {typo: {"edgeinfer_readings_recieved_total"}}
    counter_without_total = "rate(edgeinfer_messages_received[5m])"
    assert unknown_metrics([counter_without_total], known)


def test_every_dashboard_query_names_a_metric_the_module_exports() -> None:
    known, _ = exported()
    found = {where: expr for where, expr, _ in queries(dashboard())}
    names = set().union(*(metric_names(expr) for expr in found.values()))
    assert len(names) >= 15, names
    unknown = {where: metric_names(expr) - known for where, expr in found.items()}
    assert {where: bad for where, bad in unknown.items() if bad} == {}


def test_every_label_a_dashboard_query_names_is_exported() -> None:
    _, labels = exported()
    bad = {where: named - labels for where, _, named in queries(dashboard()) if named - labels}
    assert bad == {}
    app = (ROOT / "module" / "edgeinfer" / "app.py").read_text()
    assert all(f'"{label}":' in app for label in INFO_LABELS), "model_info's labels changed"


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    doc = dashboard()
    found = {where: expr for where, expr, _ in queries(doc)}
    used = set().union(*(metric_names(expr) for expr in found.values()))
    wanted = {
        "edgeinfer_messages_received_total",
        "edgeinfer_results_published_total",
        "edgeinfer_reading_errors_total",
        "edgeinfer_publish_refused_total",
        "edgeinfer_end_to_end_seconds_bucket",
        "edgeinfer_inference_seconds_bucket",
        "edgeinfer_batch_size_bucket",
        "edgeinfer_batch_size_sum",
        "edgeinfer_batch_size_count",
        "edgeinfer_queue_depth",
        "edgeinfer_queue_capacity",
        "edgeinfer_backpressure_waits_total",
        "edgeinfer_unacked_readings",
        "edgeinfer_broker_connected",
        "edgeinfer_update_state",
        "edgeinfer_model_info",
        "edgeinfer_rollout_gate",
        "edgeinfer_rollout_percent",
    }
    assert wanted - used == set()
    names = [variable["name"] for variable in doc["templating"]["list"]]
    assert {"datasource", "module", "version"} <= set(names)
    for where, expr in found.items():
        if where.startswith("panel"):
            assert "$module" in expr, f"{where} is not filtered by module"
            assert "edgeinfer_model_info" in expr, f"{where} is not per module"
    quantiles = [expr for expr in found.values() if "histogram_quantile" in expr]
    assert quantiles and all(
        "_bucket[$__rate_interval]" in e and "le" in label_names(e) for e in quantiles
    )


def test_every_panel_has_a_data_source_and_a_query_and_its_own_id() -> None:
    doc = dashboard()
    assert doc["uid"] == "edgeinfer" and doc["schemaVersion"] >= 39
    ids = [panel["id"] for panel in walk(doc["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {variable["name"]: variable for variable in doc["templating"]["list"]}
    for panel in walk(doc["panels"]):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] in ("row", "text"):
            continue
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for source in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            uid = source["uid"]
            assert uid == "prometheus" or uid.strip("${}") in variables, panel["title"]
    for panel in doc["panels"]:  # an open row's panels follow it; a collapsed one holds them
        if panel["type"] == "row" and not panel["collapsed"]:
            assert panel["panels"] == [], panel["title"]
    assert variables["datasource"]["current"]["value"] == provisioned_datasource()["uid"]


# --- compose's monitoring profile --------------------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOYMENT / "compose.yaml").read_text()))


def load_yaml(relative: str) -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOYMENT / relative).read_text()))


def provisioned_datasource() -> dict[str, Any]:
    (source,) = load_yaml("grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    return dict(source)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> path in deployment/ of each read-only bind mount."""
    out: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith("."):
            assert mode == ["ro"], f"{volume}: mount it read-only"
            out[target] = source
    return out


def test_the_monitoring_profile_adds_prometheus_and_grafana_only() -> None:
    doc = compose()
    monitoring = {n for n, s in doc["services"].items() if "monitoring" in s.get("profiles", [])}
    assert monitoring == {"prometheus", "grafana"}
    assert "profiles" not in doc["services"]["edgeinfer"], "edgeinfer runs in every profile"
    assert doc["services"]["prometheus"]["image"].startswith("prom/prometheus:")
    assert doc["services"]["grafana"]["image"].startswith("grafana/grafana:")
    assert "${" not in (DEPLOYMENT / "compose.yaml").read_text()
    assert "3000" in doc["services"]["grafana"]["ports"][0]
    for name in monitoring:
        service = doc["services"][name]
        for target, source in mounts(service).items():
            assert (DEPLOYMENT / source).exists(), (name, source, target)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in doc["volumes"], (name, volume)


def test_grafana_is_provisioned_with_the_dashboard_and_the_prometheus_service() -> None:
    grafana = compose()["services"]["grafana"]
    mounted = mounts(grafana)
    provisioning = {
        PurePosixPath(target).name: source
        for target, source in mounted.items()
        if target.startswith("/etc/grafana/provisioning/")
    }
    assert provisioning == {
        "datasources": "./grafana/provisioning/datasources",
        "dashboards": "./grafana/provisioning/dashboards",
    }
    (dashboard_target,) = [t for t, s in mounted.items() if s == "./grafana/edgeinfer.json"]
    (provider,) = load_yaml("grafana/provisioning/dashboards/edgeinfer.yaml")["providers"]
    assert provider["type"] == "file"
    assert PurePosixPath(provider["options"]["path"]) == PurePosixPath(dashboard_target).parent
    source = provisioned_datasource()
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    prometheus = compose()["services"]["prometheus"]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in grafana["depends_on"] and "monitoring" in prometheus["profiles"]


def _metrics_port() -> str:
    """The port edgeinfer's /metrics listens on in its container: edgeinfer.env, else the image."""
    for path in (DEPLOYMENT / "edgeinfer.env", ROOT / "Dockerfile"):
        found = re.search(r"EDGEINFER_HTTP_LISTEN=\S*:(\d+)", path.read_text())
        if found:
            return found.group(1)
    raise AssertionError("no EDGEINFER_HTTP_LISTEN in edgeinfer.env or the Dockerfile")


def test_prometheus_scrapes_the_edgeinfer_service_where_it_listens() -> None:
    doc = compose()
    prometheus = doc["services"]["prometheus"]
    config_path = next(
        arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file=")
    )
    source = mounts(prometheus)[config_path]
    config = load_yaml(source)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "edgeinfer"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    port = _metrics_port()
    published = {str(p).rsplit(":", 1)[-1] for p in doc["services"]["edgeinfer"]["ports"]}
    assert port in published, "compose publishes another port than edgeinfer listens on"
    assert targets == [f"edgeinfer:{port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "5s"
