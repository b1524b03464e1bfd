"""The monitoring and autoscaling objects: ServiceMonitors on each Service's metrics port, the
PrometheusRule (every expression parses, names only exported metrics, and every alert has a
runbook section), the Grafana dashboard, KEDA's ScaledObjects and the ledger-verify CronJob;
all validated offline against their vendored CRD schemas. One test scrapes a running suite and
checks every metric name those objects use is really exported."""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.cli.ledger import add_ledger_commands
from services.runtime.settings import ServerSettings
from tests.deploy.network_policy import Endpoint, allows
from tests.deploy.test_deploy_manifests import (
    KUSTOMIZE,
    PART_OF,
    REPO,
    SCHEMA_VERSIONS,
    Obj,
    Rendering,
    autoscaler_of,
    env_of,
    main_container,
    render,
    rendering,
    schema_errors,
    security_problems,
)
from tests.router.conftest import running_suite

COMPONENT = KUSTOMIZE / "components" / "monitoring"
DASHBOARD = COMPONENT / "dashboards" / "tiergen.json"
OPERATIONS = REPO / "docs" / "operations.md"
SERVICES = ("router", "generator", "ledger", "upscaler")

#: Every metric the services export (docs/operations.md, "Metrics the alerts read"), as
#: Prometheus stores it: a histogram as its _bucket, _sum and _count series.
HISTOGRAMS = {
    "grpc_server_handling_seconds",
    "grpc_client_handling_seconds",
    "tiergen_generator_render_seconds",
    "tiergen_generator_queue_wait_seconds",
    "tiergen_upscaler_upscale_seconds",
    "tiergen_upscaler_queue_wait_seconds",
}
EXPORTED = {
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_client_started_total",
    "grpc_client_handled_total",
    "tiergen_build_info",
    "tiergen_tls_certificate_expiry_timestamp_seconds",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "tiergen_worker_cpu_seconds_total",
    "tiergen_worker_resident_memory_bytes",
    "tiergen_router_breaker_state",
    "tiergen_router_images_total",
    "tiergen_router_credits_captured_total",
    "tiergen_router_jobs_total",
    "tiergen_router_quota_refusals_total",
    "tiergen_router_webhook_deliveries_total",
    "tiergen_router_webhook_outbox_age_seconds",
    "tiergen_router_webhooks_paused_total",
    "tiergen_router_batches_recovered_total",
    "tiergen_db_pool_connections",
    "tiergen_db_pool_waiting",
    "tiergen_ledger_holds_open",
    "tiergen_ledger_holds_expired_total",
    "tiergen_ledger_credits_total",
    "tiergen_generator_renders",
    "tiergen_generator_expected_wait_seconds",
    "tiergen_generator_refused_total",
    "tiergen_upscaler_jobs",
    "tiergen_upscaler_expected_wait_seconds",
    "tiergen_upscaler_refused_total",
} | {f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
#: Not exported by a service, so exempt from the scrape: pushed to the Pushgateway by the
#: ledger-verify CronJob, or kube-state-metrics' (allowed in alerts only).
PUSHED = {
    "tiergen_ledger_verify_last_run_timestamp_seconds",
    "tiergen_ledger_verify_last_success_timestamp_seconds",
    "tiergen_ledger_verify_violations",
}
CLUSTER = {"kube_pod_container_status_restarts_total", "kube_pod_container_status_waiting_reason"}
#: What the dashboard has a panel on, at least (the business's figures and the on-call's).
DASHBOARD_MUST_SHOW = {
    "tiergen_router_images_total",
    "tiergen_router_credits_captured_total",
    "grpc_server_handling_seconds_bucket",
    "grpc_server_handled_total",
    "tiergen_generator_renders",
    "tiergen_generator_queue_wait_seconds_bucket",
    "tiergen_upscaler_jobs",
    "tiergen_ledger_holds_open",
    "tiergen_router_breaker_state",
    "tiergen_router_webhook_outbox_age_seconds",
    "tiergen_router_quota_refusals_total",
}
#: Grafana's variables, replaced by what they stand for before a query is parsed.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__range": "6h",
    "$namespace": "tiergen",
    "$service": "router|ledger",
}


# -- PromQL --


def metric_names(expression: str) -> set[str]:
    """The metric names `expression` reads; raises ValueError when it does not parse."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            names.update(m.value for m in node.matchers.matchers if m.name == "__name__")
            return
        for attribute in ("expr", "lhs", "rhs", "param", "vector_selector"):
            child = getattr(node, attribute, None)
            if child is not None:
                walk(child)
        for child in getattr(node, "args", None) or ():
            walk(child)

    walk(promql_parser.parse(expression))
    return names


def names_problems(where: str, expression: str, allowed: set[str]) -> list[str]:
    """Whether `expression` parses and reads only `allowed` metrics."""
    try:
        names = metric_names(expression)
    except ValueError as error:
        return [f"{where}: does not parse: {error}"]
    if not names:
        return [f"{where}: reads no metric"]
    return [f"{where}: {name} is not an exported metric" for name in sorted(names - allowed)]


def test_metric_names_come_from_every_part_of_an_expression() -> None:
    expression = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{job="x"}[5m]))) > on() group_left()'
        ' (b - max_over_time(c[1h:5m])) or absent({__name__="d"}) unless topk(3, -e offset 5m)'
    )
    assert metric_names(expression) == {"a_bucket", "b", "c", "d", "e"}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sum(rate(x[5m])", "r: does not parse: unclosed left parenthesis"),
        ("vector(1) > 0", "r: reads no metric"),
        ("rate(tiergen_router_image_total[5m])", "r: tiergen_router_image_total is not an"),
    ],
)
def test_the_names_check_catches(expression: str, expected: str) -> None:
    (problem,) = names_problems("r", expression, EXPORTED)
    assert problem.startswith(expected)


# -- the objects --


def monitored_dev(tmp: Path) -> Rendering:
    """dev with the monitoring component added, as docs/operations.md says to try it."""
    overlay = tmp / "dev-monitored"
    overlay.mkdir()
    relative = functools.partial(os.path.relpath, start=overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "tiergen-dev",
                "resources": [relative(KUSTOMIZE / "overlays" / "dev")],
                "components": [relative(COMPONENT)],
            }
        )
    )
    return render(overlay, "dev")


@pytest.fixture(scope="module")
def dev_monitored(tmp_path_factory: pytest.TempPathFactory) -> Rendering:
    return monitored_dev(tmp_path_factory.mktemp("overlay"))


def monitoring_objects(objects: Rendering) -> list[Obj]:
    groups = ("monitoring.coreos.com/", "keda.sh/")
    return [
        obj
        for obj in objects.objects
        if obj["apiVersion"].startswith(groups)
        or obj["kind"] == "CronJob"
        or obj["metadata"]["name"] in ("tiergen-dashboard", "ledger-verify-egress")
    ]


def test_dev_applies_on_a_cluster_without_the_operator_or_keda() -> None:
    assert monitoring_objects(rendering("dev")) == []


def test_production_includes_the_monitoring_component() -> None:
    kinds = sorted({obj["kind"] for obj in monitoring_objects(rendering("production"))})
    assert kinds == [
        "ConfigMap",
        "CronJob",
        "NetworkPolicy",
        "PrometheusRule",
        "ScaledObject",
        "ServiceMonitor",
    ]


def test_every_monitoring_object_matches_its_schema_in_both_overlays(
    dev_monitored: Rendering,
) -> None:
    found = monitoring_objects(rendering("production")) + monitoring_objects(dev_monitored)
    assert {obj["kind"] for obj in monitoring_objects(dev_monitored)} == {
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
    }
    errors = [
        f"{obj['kind']}/{obj['metadata']['name']} @ {version}: {error}"
        for obj in found
        for version in SCHEMA_VERSIONS
        for error in schema_errors(obj, version)
    ]
    assert errors == []
    for obj in found:
        assert obj["metadata"]["labels"].get(PART_OF[0]) == PART_OF[1], obj["metadata"]
    # The whole of dev with the component is as valid as dev itself.
    for obj in dev_monitored.objects:
        assert schema_errors(obj, SCHEMA_VERSIONS[-1]) == [], obj["metadata"]["name"]


def test_a_broken_service_monitor_is_refused_by_the_vendored_schema() -> None:
    (monitor, *_) = rendering("production").of_kind("ServiceMonitor")
    broken = json.loads(json.dumps(monitor))
    broken["spec"]["endpoints"][0]["intervall"] = "30s"
    broken["spec"]["endpoints"][0]["scheme"] = "grpc"
    errors = schema_errors(broken, SCHEMA_VERSIONS[-1])
    assert any("'intervall' was unexpected" in e for e in errors), errors
    assert any("'grpc' is not one of ['http', 'https']" in e for e in errors), errors
    broken = json.loads(json.dumps(monitor))
    broken["spec"]["endpoints"][0]["tlsConfig"] = {"insecureSkipVerify": True}
    assert "whose schema was not vendored" in " ".join(schema_errors(broken, "1.30"))


@pytest.mark.parametrize("overlay", ["production", "dev-monitored"])
def test_each_service_is_scraped_on_its_metrics_port_from_the_monitoring_namespace(
    overlay: str, dev_monitored: Rendering
) -> None:
    objects = rendering("production") if overlay == "production" else dev_monitored
    monitors = objects.of_kind("ServiceMonitor")
    policies = objects.of_kind("NetworkPolicy")
    namespace = objects.named("Service", "router")["metadata"]["namespace"]  # type: ignore[index]
    prometheus = Endpoint.pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    stranger = Endpoint.pod("stranger", "elsewhere", {"app": "client"})
    for name in SERVICES:
        service = objects.named("Service", name)
        assert service is not None
        selecting = [
            m
            for m in monitors
            if m["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        ]
        assert [m["metadata"]["name"] for m in selecting] == [name]
        (endpoint,) = selecting[0]["spec"]["endpoints"]
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        container = main_container(objects.deployments[name])
        settings = ServerSettings.from_env(
            name, {k: e.get("value", "") for k, e in env_of(container).items()}
        )
        (target,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
        assert target["containerPort"] == settings.metrics_port == port["port"]
        assert endpoint.get("path", "/metrics") == "/metrics"
        pod = Endpoint.pod(
            name,
            namespace,
            objects.deployments[name]["spec"]["template"]["metadata"]["labels"],
            ports={p["name"]: p["containerPort"] for p in container["ports"]},
        )
        assert allows(policies, prometheus, pod, target["containerPort"], direction="Ingress")
        assert not allows(policies, stranger, pod, target["containerPort"], direction="Ingress")


# -- the rules --


@functools.cache
def prometheus_rule() -> Obj:
    (rule,) = rendering("production").of_kind("PrometheusRule")
    return rule


def rules() -> Iterator[Obj]:
    for group in prometheus_rule()["spec"]["groups"]:
        yield from group["rules"]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def rule_problems(rule_object: Obj) -> list[str]:
    """Each expression parses and names only exported or recorded metrics; each alert has a
    severity, a summary, a description and a runbook section that exists."""
    groups = rule_object["spec"]["groups"]
    recordings = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    allowed = EXPORTED | PUSHED | CLUSTER | recordings
    sections = runbook_anchors()
    problems = []
    for group in groups:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            problems += names_problems(str(name), str(rule["expr"]), allowed)
            if "alert" not in rule:
                continue
            if rule.get("labels", {}).get("severity") not in {"warning", "critical"}:
                problems.append(f"{name}: severity is not warning or critical")
            annotations = rule.get("annotations", {})
            for key in ("summary", "description"):
                if not annotations.get(key):
                    problems.append(f"{name}: no {key}")
            runbook = urllib.parse.urlsplit(annotations.get("runbook_url", ""))
            if runbook.path != "docs/operations.md" or runbook.fragment not in sections:
                problems.append(f"{name}: runbook_url is not a section of docs/operations.md")
    return problems


def runbook_anchors() -> set[str]:
    """The anchors of docs/operations.md's headings, as GitHub makes them."""
    headings = re.findall(r"^#+ (.+)$", OPERATIONS.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_rule_parses_and_names_only_exported_metrics_and_every_alert_has_a_runbook() -> None:
    assert rule_problems(prometheus_rule()) == []


def test_the_rule_check_catches() -> None:
    spoiled = json.loads(json.dumps(prometheus_rule()))
    alert = next(r for g in spoiled["spec"]["groups"] for r in g["rules"] if "alert" in r)
    alert["expr"] = "rate(tiergen_router_images[5m]) > 0"
    alert["annotations"]["runbook_url"] = "docs/operations.md#nowhere"
    del alert["labels"]["severity"]
    name = alert["alert"]
    assert rule_problems(spoiled) == [
        f"{name}: tiergen_router_images is not an exported metric",
        f"{name}: severity is not warning or critical",
        f"{name}: runbook_url is not a section of docs/operations.md",
    ]


def test_the_alerts_cover_what_the_on_call_acts_on() -> None:
    alerts = {rule["alert"]: str(rule["expr"]) for rule in rules() if "alert" in rule}
    reads = {name: metric_names(expr) for name, expr in alerts.items()}
    wanted = {
        "tiergen:grpc_server_errors:ratio_rate1h",
        "tiergen:grpc_server_slow:ratio_rate1h",
        "tiergen_ledger_verify_violations",
        "tiergen_ledger_verify_last_success_timestamp_seconds",
        "tiergen_ledger_holds_expired_total",
        "tiergen_router_breaker_state",
        "tiergen_generator_queue_wait_seconds_bucket",
        "tiergen_upscaler_queue_wait_seconds_bucket",
        "tiergen_router_webhook_outbox_age_seconds",
        "tiergen_tls_certificate_expiry_timestamp_seconds",
        "kube_pod_container_status_waiting_reason",
    }
    assert wanted <= set().union(*reads.values())
    # Multi-window: each burn-rate alert pairs a long window with a short one.
    for name in ("TiergenRpcErrorBudgetBurn", "TiergenRpcLatencyBudgetBurn"):
        windows = {n.rsplit("_rate", 1)[1] for n in reads[name]}
        assert windows == {"1h", "5m", "6h", "30m"}, name
    # Certificates: warn under 14 days, page under 3.
    assert "14 * 86400" in alerts["TiergenCertificateExpiringSoon"]
    assert "3 * 86400" in alerts["TiergenCertificateExpiryImminent"]
    # Every recording rule is read by an alert (the dashboard adds none of its own).
    assert recorded() <= set().union(*reads.values())


# -- the dashboard --


def dashboard_queries(dashboard: Obj) -> dict[str, str]:
    """{panel title / refId: expression} of every panel (and row) of the dashboard."""
    found = {}
    panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
    for panel in panels:
        for target in panel.get("targets", []):
            found[f"{panel['title']} / {target['refId']}"] = target["expr"]
    return found


def grafana_free(expression: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    assert "$" not in expression, f"an unknown Grafana variable in {expression}"
    return expression


def test_every_dashboard_query_parses_and_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = dashboard_queries(dashboard)
    allowed = EXPORTED | PUSHED | recorded()
    problems = [
        problem
        for where, expression in queries.items()
        for problem in names_problems(where, grafana_free(expression), allowed)
    ]
    assert problems == []
    shown = set().union(*(metric_names(grafana_free(e)) for e in queries.values()))
    assert shown >= DASHBOARD_MUST_SHOW, DASHBOARD_MUST_SHOW - shown
    # Every variable a query uses is defined by the dashboard (or is Grafana's own).
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    used = set(re.findall(r"\$(\w+)", " ".join(queries.values()))) - {"__rate_interval", "__range"}
    assert used <= defined
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_dashboard_is_provisioned_for_grafanas_sidecar() -> None:
    config = rendering("production").named("ConfigMap", "tiergen-dashboard")
    assert config is not None
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["data"]["tiergen.json"] == DASHBOARD.read_text(encoding="utf-8")


# -- autoscaling --


def test_generator_and_upscaler_scale_on_their_queue_and_cpu_with_no_second_autoscaler() -> None:
    production = rendering("production")
    namespace = production.named("Service", "router")["metadata"]["namespace"]  # type: ignore[index]
    scaled = {obj["metadata"]["name"]: obj for obj in production.of_kind("ScaledObject")}
    assert sorted(scaled) == ["generator", "upscaler"]
    queue_metrics = {"generator": "tiergen_generator_renders", "upscaler": "tiergen_upscaler_jobs"}
    for name, obj in scaled.items():
        assert obj["spec"]["scaleTargetRef"]["name"] in production.deployments
        # KEDA's own HPA is the only one: base's HPA of the Deployment is gone.
        assert production.named("HorizontalPodAutoscaler", name) is None
        assert autoscaler_of(production, name) is not None
        triggers = {t["type"]: t for t in obj["spec"]["triggers"]}
        assert sorted(triggers) == ["cpu", "prometheus"]
        assert triggers["cpu"]["metricType"] == "Utilization"
        metadata = triggers["prometheus"]["metadata"]
        query = metadata["query"]
        assert names_problems(name, query, EXPORTED) == []
        assert metric_names(query) == {queue_metrics[name]}
        assert f'namespace="{namespace}"' in query and f'job="{name}"' in query
        assert float(metadata["threshold"]) > 0
        assert urllib.parse.urlsplit(metadata["serverAddress"]).scheme == "http"
        assert 2 <= obj["spec"]["minReplicaCount"] < obj["spec"]["maxReplicaCount"]


# -- the ledger's verification --


def verify_job(production: Rendering) -> Obj:
    cronjob = production.named("CronJob", "ledger-verify")
    assert cronjob is not None
    job: Obj = cronjob["spec"]["jobTemplate"]
    return job


def test_the_verify_cronjob_runs_the_command_hardened_with_the_dsn_from_a_file() -> None:
    production = rendering("production")
    job = verify_job(production)
    as_deployment = {"metadata": {"name": "ledger-verify"}, "spec": job["spec"]}
    assert security_problems(as_deployment) == []
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["tiergen", "ledger", "verify"]
    parser = argparse.ArgumentParser(prog="tiergen")
    add_ledger_commands(parser.add_subparsers(dest="command", required=True))
    assert parser.parse_args(command[1:]).handler is not None
    env = {entry["name"]: entry for entry in container["env"]}
    assert all("valueFrom" not in entry for entry in env.values()), "a secret in the environment"
    assert urllib.parse.urlsplit(env["TIERGEN_PUSHGATEWAY_URL"]["value"]).scheme == "http"
    dsn_file = Path(env["TIERGEN_LEDGER_DSN_FILE"]["value"])
    (mount,) = [m for m in container["volumeMounts"] if dsn_file.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "tiergen-postgres"
    (item,) = volume["secret"]["items"]
    assert item == {"key": "ledger-dsn", "path": str(dsn_file.relative_to(mount["mountPath"]))}
    assert job["spec"]["backoffLimit"] == 0


def test_the_verify_cronjob_reaches_postgresql_and_the_pushgateway_only() -> None:
    production = rendering("production")
    policies = production.of_kind("NetworkPolicy")
    labels = verify_job(production)["spec"]["template"]["metadata"]["labels"]
    pod = Endpoint.pod("ledger-verify", "tiergen", labels)
    gateway = Endpoint.pod(
        "pushgateway", "monitoring", {"app.kubernetes.io/name": "prometheus-pushgateway"}
    )
    database = Endpoint.outside("database", "10.20.30.40")
    assert allows(policies, pod, database, 5432, direction="Egress")
    assert allows(policies, pod, gateway, 9091, direction="Egress")
    assert not allows(policies, pod, gateway, 9090, direction="Egress")
    assert not allows(policies, pod, Endpoint.outside("internet", "203.0.113.10"), 443)
    ledger = production.deployments["ledger"]
    ledger_pod = Endpoint.pod("ledger", "tiergen", ledger["spec"]["template"]["metadata"]["labels"])
    assert not allows(policies, pod, ledger_pod, 50053)


# -- against a running suite --


def scraped_names(text: str) -> set[str]:
    """The series names a /metrics page declares, histograms and counters as Prometheus stores
    them, including families declared with no sample yet."""
    names = set()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


@pytest.mark.slow
async def test_every_metric_the_monitoring_reads_is_exported_by_a_running_suite(
    tmp_path: Path,
) -> None:
    metrics = {"TIERGEN_METRICS_PORT": "0"}
    async with running_suite(tmp_path, metrics, metrics) as suite:
        router = suite.router
        account = await suite.open_account()
        await router.GetBalance(router_pb2.GetBalanceRequest(account_id=account))
        spec = router_pb2.GenerationSpec(
            prompt="a lighthouse at dawn",
            tier="nano",
            resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K),
        )
        await router.Quote(router_pb2.QuoteRequest(account_id=account, spec=spec))
        request = router_pb2.GenerateRequest(
            account_id=account, idempotency_key=uuid.uuid4().hex, spec=spec
        )
        jobs = [e.job async for e in router.Generate(request) if e.WhichOneof("event") == "job"]
        assert [job.status for job in jobs] == [router_pb2.JOB_STATUS_SUCCEEDED]
        upscale = router_pb2.UpscaleRequest(
            account_id=account, idempotency_key=uuid.uuid4().hex, job_id=jobs[0].job_id, factor=2
        )
        async for _ in router.Upscale(upscale):
            pass
        exported: set[str] = set()
        async with httpx.AsyncClient(timeout=10) as client:
            for server in suite.servers.values():
                if server.metrics_port is None:
                    continue
                page = await client.get(f"http://127.0.0.1:{server.metrics_port}/metrics")
                page.raise_for_status()
                exported |= scraped_names(page.text)
    assert exported, "no service served metrics"

    used: dict[str, set[str]] = {}
    for rule in rules():
        used.setdefault(f"rule {rule.get('alert') or rule.get('record')}", set()).update(
            metric_names(str(rule["expr"]))
        )
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for where, expression in dashboard_queries(dashboard).items():
        used[f"dashboard {where}"] = metric_names(grafana_free(expression))
    for scaled in rendering("production").of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] == "prometheus":
                used[f"ScaledObject {scaled['metadata']['name']}"] = metric_names(
                    trigger["metadata"]["query"]
                )
    exempt = PUSHED | CLUSTER | recorded()
    missing = {
        f"{where}: {name}"
        for where, names in used.items()
        for name in names
        if name not in exempt and name not in exported
    }
    assert sorted(missing) == []
