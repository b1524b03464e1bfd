"""Renders each Kustomize overlay, validates it offline against the Kubernetes schemas (and
cert-manager's, vendored in tests/deploy/crds) and checks the rules Tiergen's deployment depends
on: hardened pods, gRPC probes, wiring, scaling, secrets, certificates and NetworkPolicies."""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from tiergen.generator.v1 import generator_pb2
from tiergen.ledger.v1 import ledger_pb2
from tiergen.router.v1 import router_pb2
from tiergen.upscaler.v1 import upscaler_pb2

from services.ledger.settings import LedgerSettings
from services.router.routing.policy import RoutingPolicy
from services.router.routing.pricing import PriceTable
from services.router.routing.toml_source import TomlSource
from services.runtime.identities import ADMIN_IDENTITY, ROUTER_IDENTITY, service_identity
from services.runtime.settings import DEFAULT_PORTS, ChannelSecurity, Env, ServerSettings
from services.upscaler.settings import UpscalerSettings
from tests.deploy.crd_validation import covers, crd_errors
from tests.deploy.network_policy import Endpoint, allows, governing

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ("dev", "production")

#: The oldest Kubernetes the manifests target (the preStop `sleep` action is on by default from
#: 1.30) and the newest whose schemas kubernetes-validate ships.
SCHEMA_VERSIONS = ("1.30", kubernetes_validate.latest_version())

#: The gRPC service each Deployment serves, as its readiness probe must name it.
GRPC_SERVICES = {
    "router": router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name,
    "generator": generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name,
    "ledger": ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
    "upscaler": upscaler_pb2.DESCRIPTOR.services_by_name["UpscalerService"].full_name,
}
#: The router's dependency variables and the Deployment each must reach.
ROUTER_DEPENDENCIES = {
    "LEDGER_ADDR": "ledger",
    "GENERATOR_ADDR": "generator",
    "UPSCALER_ADDR": "upscaler",
}
#: Secrets each overlay references but that are created outside the repository.
EXTERNAL_SECRETS = {
    "dev": frozenset[str](),
    "production": frozenset(
        {"tiergen-postgres", "tiergen-postgres-owner", "tiergen-object-storage", "tiergen-ca"}
    ),
}
#: The plaintext grpc.health.v1 port every pod serves its kubelet probes on.
HEALTH_PORT = 50060
#: The services that require a client certificate (mutual TLS) and serve only the router.
BACKENDS = ("generator", "ledger", "upscaler")
PART_OF = ("app.kubernetes.io/part-of", "tiergen")
#: `scheme://user:password@`: a credential written into a DSN or URL.
CREDENTIAL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Rendering:
    """The objects `kubectl kustomize` produced for one overlay."""

    overlay: str
    objects: list[Obj]

    def of_kind(self, kind: str) -> list[Obj]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def named(self, kind: str, name: str) -> Obj | None:
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(found) <= 1, f"{self.overlay}: {len(found)} {kind} objects named {name}"
        return found[0] if found else None

    @property
    def deployments(self) -> dict[str, Obj]:
        return {obj["metadata"]["name"]: obj for obj in self.of_kind("Deployment")}


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        reason = "kubectl is not on PATH: the Kubernetes overlays were NOT rendered nor checked"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def render(directory: Path, overlay: str) -> Rendering:
    """`kubectl kustomize DIRECTORY`, checked by the rules of `overlay` (dev or production)."""
    result = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return Rendering(overlay, [doc for doc in yaml.safe_load_all(result.stdout) if doc])


@functools.cache
def rendering(overlay: str) -> Rendering:
    return render(KUSTOMIZE / "overlays" / overlay, overlay)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> Rendering:
    return rendering(request.param)


def pod_spec(deployment: Obj) -> Obj:
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def main_container(deployment: Obj) -> Obj:
    """The container named after its Deployment, the one running the service."""
    name = deployment["metadata"]["name"]
    matches: list[Obj] = [c for c in pod_spec(deployment)["containers"] if c["name"] == name]
    assert len(matches) == 1, f"{name}: expected one container named {name}"
    return matches[0]


def env_of(container: Obj) -> dict[str, Obj]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def env_value(container: Obj, name: str) -> str | None:
    """A literal env value (None when unset or taken from a reference)."""
    entry = env_of(container).get(name)
    return None if entry is None else entry.get("value")


def container_port(container: Obj, name: str) -> int:
    ports = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == name]
    assert len(ports) == 1, f"{container['name']}: expected one container port named {name}"
    port: int = ports[0]
    return port


def grpc_port(container: Obj) -> int:
    return container_port(container, "grpc")


def telemetry_config(rendering: Rendering) -> Obj:
    """The ConfigMap every service reads its log level and OTEL_* settings from."""
    (config,) = [
        config
        for config in rendering.of_kind("ConfigMap")
        if config["metadata"]["name"].startswith("tiergen-telemetry-")
    ]
    return config


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def selected_deployments(rendering: Rendering, selector: dict[str, str]) -> list[str]:
    return [
        name
        for name, deployment in rendering.deployments.items()
        if selects(selector, deployment["spec"]["template"]["metadata"].get("labels", {}))
    ]


_QUANTITY_SUFFIXES = {
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("250m", "2", "1536Mi") as a number."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", value)
    if match is None or match.group(2) not in {"", *_QUANTITY_SUFFIXES}:
        raise ValueError(f"not a resource quantity: {value!r}")
    return float(match.group(1)) * _QUANTITY_SUFFIXES.get(match.group(2), 1.0)


# -- checks: each returns what is wrong, so a test can also show that it catches a bad manifest --


def security_problems(deployment: Obj) -> list[str]:
    """What keeps a pod from the restricted Pod Security Standard and Tiergen's own hardening."""
    name = deployment["metadata"]["name"]
    pod = pod_spec(deployment)
    pod_context = pod.get("securityContext", {})
    problems = []
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: mounts a service account token it never uses")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{name}: {key} is on")
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        where = f"{name}/{container['name']}"
        context = container.get("securityContext", {})
        # The container's own setting wins over the pod's, as in Kubernetes.
        inherited = {**pod_context, **context}
        if inherited.get("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        uid = inherited.get("runAsUser")
        if not isinstance(uid, int) or uid == 0:
            problems.append(f"{where}: runAsUser is not a numeric non-root id: {uid!r}")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem is writable")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: privilege escalation is allowed")
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{where}: capabilities are not all dropped")
        if capabilities.get("add"):
            problems.append(f"{where}: adds capabilities {capabilities['add']}")
        seccomp = inherited.get("seccompProfile", {}).get("type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{where}: seccomp profile is {seccomp!r}")
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        if "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
            problems.append(f"{where}: /tmp is not a writable emptyDir")
    return problems


def probe_problems(deployment: Obj) -> list[str]:
    """Native gRPC health probes, on the plaintext health port (the kubelet does not speak TLS):
    readiness on the service, liveness on the whole server."""
    name = deployment["metadata"]["name"]
    container = main_container(deployment)
    port = container_port(container, "health")
    problems = []
    if env_value(container, "TIERGEN_HEALTH_PORT") != str(port):
        problems.append(f"{name}: TIERGEN_HEALTH_PORT is not the health container port {port}")
    probes = {kind: container.get(f"{kind}Probe") for kind in ("startup", "readiness", "liveness")}
    for kind, probe in probes.items():
        if not probe or "grpc" not in probe:
            problems.append(f"{name}: no gRPC {kind} probe")
        elif probe["grpc"].get("port") != port:
            problems.append(f"{name}: {kind} probe checks port {probe['grpc'].get('port')}")
    readiness, liveness = probes["readiness"], probes["liveness"]
    if problems or readiness is None or liveness is None:
        return problems
    if readiness["grpc"].get("service") != GRPC_SERVICES.get(name):
        problems.append(f"{name}: readiness checks {readiness['grpc'].get('service')!r}")
    # "" is the whole server: a pod whose service waits on a dependency is not ready, but it is
    # alive, and restarting it would not bring the dependency back.
    if liveness["grpc"].get("service", "") != "":
        problems.append(f"{name}: liveness checks {liveness['grpc'].get('service')!r}, not ''")
    if readiness == liveness:
        problems.append(f"{name}: liveness and readiness probes are identical")

    def patience(probe: Obj) -> int:
        period: int = probe.get("periodSeconds", 10)
        threshold: int = probe.get("failureThreshold", 3)
        return period * threshold

    if patience(liveness) <= patience(readiness):
        problems.append(f"{name}: liveness gives up no later than readiness")
    grace = float(env_value(container, "TIERGEN_SHUTDOWN_GRACE_SECONDS") or 10)
    if patience(liveness) <= grace:
        problems.append(f"{name}: liveness could kill the pod while it drains ({grace} s)")
    return problems


def shutdown_problems(deployment: Obj) -> list[str]:
    """Kubernetes must wait for the preStop pause plus the drain before it kills the process."""
    name = deployment["metadata"]["name"]
    container = main_container(deployment)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = float(env_value(container, "TIERGEN_SHUTDOWN_GRACE_SECONDS") or 10)
    allowed = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
    if allowed <= pre_stop + grace:
        return [f"{name}: terminationGracePeriodSeconds {allowed} <= {pre_stop} + {grace} s"]
    return []


def router_address_problems(rendering: Rendering) -> list[str]:
    """Each `*_ADDR` of the router names a Service, on its port, in front of the right pods."""
    router = rendering.deployments["router"]
    container = main_container(router)
    namespace = router["metadata"].get("namespace")
    problems = []
    for variable, target in ROUTER_DEPENDENCIES.items():
        address = env_value(container, variable)
        if address is None:
            problems.append(f"router: {variable} is not set")
            continue
        host, _, port = address.rpartition(":")
        service_name, *domain = host.split(".")
        if domain and domain[0] != namespace:
            problems.append(f"router: {variable}={address} leaves namespace {namespace}")
        service = rendering.named("Service", service_name)
        if service is None:
            problems.append(f"router: {variable}={address} names no Service")
            continue
        if int(port) not in {p["port"] for p in service["spec"]["ports"]}:
            problems.append(f"router: {variable}={address}: {service_name} has no such port")
        if selected_deployments(rendering, service["spec"].get("selector", {})) != [target]:
            problems.append(f"router: {variable}: Service {service_name} does not select {target}")
    return problems


def autoscalers_of(rendering: Rendering) -> list[Obj]:
    """The HPAs, and each KEDA ScaledObject in the shape of the HPA KEDA makes of it (its CPU and
    memory triggers as resource metrics; KEDA's defaults: 0 to 100 replicas)."""
    found = list(rendering.of_kind("HorizontalPodAutoscaler"))
    for scaled in rendering.of_kind("ScaledObject"):
        spec = scaled["spec"]
        triggers = spec["triggers"]
        resources = [t["type"] for t in triggers if t["type"] in ("cpu", "memory")]
        found.append(
            {
                "kind": "ScaledObject",
                "metadata": scaled["metadata"],
                "spec": {
                    "scaleTargetRef": {"kind": "Deployment", **spec["scaleTargetRef"]},
                    "minReplicas": spec.get("minReplicaCount", 0),
                    "maxReplicas": spec.get("maxReplicaCount", 100),
                    "metrics": [{"resource": {"name": name}} for name in resources],
                },
            }
        )
    return found


def autoscaler_of(rendering: Rendering, deployment: str) -> Obj | None:
    """The one autoscaler (HPA or ScaledObject, as `autoscalers_of`) of `deployment`, if any."""
    found = [
        a for a in autoscalers_of(rendering) if a["spec"]["scaleTargetRef"]["name"] == deployment
    ]
    assert len(found) <= 1, f"{rendering.overlay}: {len(found)} autoscalers of {deployment}"
    return found[0] if found else None


def scaling_problems(rendering: Rendering) -> list[str]:
    """A PDB for every Deployment; an HPA for every one that may run several replicas, and none,
    with exactly one pod replaced by Recreate, for one whose store is a SQLite file."""
    problems = []
    autoscalers = autoscalers_of(rendering)
    budgets = rendering.of_kind("PodDisruptionBudget")
    for name, deployment in rendering.deployments.items():
        labels = deployment["spec"]["template"]["metadata"].get("labels", {})
        covering = [
            b for b in budgets if selects(b["spec"]["selector"].get("matchLabels", {}), labels)
        ]
        if len(covering) != 1:
            problems.append(f"{name}: {len(covering)} PodDisruptionBudgets, expected one")
        targets = [
            hpa
            for hpa in autoscalers
            if hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
            and hpa["spec"]["scaleTargetRef"]["name"] == name
        ]
        container = main_container(deployment)
        dsns = [
            entry.get("value") or ""
            for key, entry in env_of(container).items()
            if key.endswith("_DSN")
        ]
        if any(dsn.startswith("sqlite:") for dsn in dsns):
            if targets:
                problems.append(f"{name}: on SQLite but autoscaled")
            replicas = deployment["spec"].get("replicas")
            if replicas != 1:
                problems.append(f"{name}: on SQLite with replicas {replicas}")
            if deployment["spec"].get("strategy", {}).get("type") != "Recreate":
                problems.append(f"{name}: on SQLite but a rollout would run two pods at once")
            continue
        if len(targets) != 1:
            problems.append(f"{name}: {len(targets)} HorizontalPodAutoscalers, expected one")
            continue
        hpa = targets[0]
        if "replicas" in deployment["spec"]:
            problems.append(f"{name}: sets replicas, which every apply would reset under its HPA")
        metrics = [m.get("resource", {}).get("name") for m in hpa["spec"].get("metrics", [])]
        if "cpu" not in metrics:
            problems.append(f"{name}: its HPA does not scale on CPU")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            problems.append(f"{name}: HPA minReplicas above maxReplicas")
    return problems


def reference_problems(rendering: Rendering) -> list[str]:
    """Every ConfigMap, Secret, claim and volume a pod names exists (the schemas cannot tell)."""
    problems = []
    config_maps = {obj["metadata"]["name"] for obj in rendering.of_kind("ConfigMap")}
    claims = {obj["metadata"]["name"] for obj in rendering.of_kind("PersistentVolumeClaim")}
    secrets = (
        {obj["metadata"]["name"] for obj in rendering.of_kind("Secret")}
        | EXTERNAL_SECRETS[rendering.overlay]
        | {cert["spec"]["secretName"] for cert in rendering.of_kind("Certificate")}
    )
    for name, deployment in rendering.deployments.items():
        pod = pod_spec(deployment)
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
                problems.append(f"{name}: volume {volume['name']} names a missing ConfigMap")
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim is not None and claim not in claims:
                problems.append(f"{name}: volume {volume['name']} names missing claim {claim}")
            secret = volume.get("secret", {}).get("secretName")
            if secret is not None and secret not in secrets:
                problems.append(f"{name}: volume {volume['name']} names unknown Secret {secret}")
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{name}: mounts undeclared volume {mount['name']}")
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef")
                if ref is not None and ref["name"] not in config_maps:
                    problems.append(f"{name}: envFrom names missing ConfigMap {ref['name']}")
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {})
                if "secretKeyRef" in ref and ref["secretKeyRef"]["name"] not in secrets:
                    problems.append(f"{name}: {entry['name']} names unknown Secret")
                if "configMapKeyRef" in ref and ref["configMapKeyRef"]["name"] not in config_maps:
                    problems.append(f"{name}: {entry['name']} names a missing ConfigMap")
    for hpa in rendering.of_kind("HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] not in rendering.deployments:
            problems.append(f"HPA {hpa['metadata']['name']} scales a missing Deployment")
    for budget in rendering.of_kind("PodDisruptionBudget"):
        if not selected_deployments(rendering, budget["spec"]["selector"].get("matchLabels", {})):
            problems.append(f"PDB {budget['metadata']['name']} selects no Deployment")
    issuers = {obj["metadata"]["name"] for obj in rendering.of_kind("Issuer")}
    for certificate in rendering.of_kind("Certificate"):
        ref = certificate["spec"]["issuerRef"]
        if ref.get("kind", "Issuer") != "Issuer" or ref["name"] not in issuers:
            problems.append(f"Certificate {certificate['metadata']['name']}: no Issuer {ref}")
    for issuer in rendering.of_kind("Issuer"):
        secret = issuer["spec"].get("ca", {}).get("secretName")
        if secret is not None and secret not in secrets:
            problems.append(f"Issuer {issuer['metadata']['name']}: unknown CA Secret {secret}")
    return problems


def secret_problems(objects: list[Obj]) -> list[str]:
    """Secret values must never be in the manifests: no Secret objects, no credentials in DSNs."""
    problems = []
    for obj in objects:
        where = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] == "Secret":
            problems.append(f"{where}: a Secret is committed")
        for key, value in (obj.get("data") or {}).items():
            if CREDENTIAL.search(str(value)):
                problems.append(f"{where}: {key} holds a credential")
        if obj["kind"] == "Deployment":
            for container in pod_spec(obj)["containers"]:
                for entry in container.get("env", []):
                    if CREDENTIAL.search(entry.get("value", "")):
                        problems.append(f"{where}: {entry['name']} holds a credential")
    return problems


# -- schema --


def schema_errors(obj: Obj, version: str) -> list[str]:
    """What keeps `obj` from the API server of Kubernetes `version`: built-in kinds against
    kubernetes-validate's schemas, cert-manager's against the vendored CRD schemas."""
    if covers(obj):
        return crd_errors(obj, version)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(str(part) for part in error.path)}: {error.message}"]
    return []


def test_every_rendered_object_matches_the_kubernetes_schemas(overlay: Rendering) -> None:
    # A kind with no schema at all raises SchemaNotFoundError: nothing goes unchecked.
    errors = [
        f"{obj['kind']}/{obj['metadata']['name']} @ {version}: {error}"
        for obj in overlay.objects
        for version in SCHEMA_VERSIONS
        for error in schema_errors(obj, version)
    ]
    assert errors == []


def test_the_overlays_render_cert_manager_objects_checked_by_the_vendored_schemas(
    overlay: Rendering,
) -> None:
    kinds = {(obj["apiVersion"], obj["kind"]) for obj in overlay.objects if covers(obj)}
    expected = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}
    if overlay.overlay == "production":
        # The monitoring component and KEDA's autoscaling (tests/deploy/test_deploy_monitoring.py).
        expected |= {
            ("monitoring.coreos.com/v1", "ServiceMonitor"),
            ("monitoring.coreos.com/v1", "PrometheusRule"),
            ("keda.sh/v1alpha1", "ScaledObject"),
        }
    assert kinds == expected


@pytest.mark.parametrize(
    ("kind", "spoil", "expected"),
    [
        ("Certificate", lambda c: c["spec"].update(dnsName=["x"]), "'dnsName' was unexpected"),
        ("Certificate", lambda c: c["spec"]["usages"].append("server-auth"), "is not one of"),
        ("Certificate", lambda c: c["spec"].pop("secretName"), "'secretName' is a required"),
        ("Certificate", lambda c: c["spec"].update(duration=720), "is not of type 'string'"),
        ("Certificate", lambda c: c["spec"].update(revisionHistoryLimit=2**40), "'int32'"),
        ("Certificate", lambda c: c["spec"]["privateKey"].update(size="256"), "'integer'"),
        ("Certificate", lambda c: c["metadata"]["labels"].update(x=1), "metadata.labels.x"),
        ("Certificate", lambda c: c["metadata"].update(nmae="x"), "'nmae' was unexpected"),
        ("Issuer", lambda i: i.pop("spec"), "'spec' is a required"),
        ("Issuer", lambda i: i["spec"]["ca"].pop("secretName"), "'secretName' is a required"),
        ("Issuer", lambda i: i["spec"].update(acme={"server": "x"}), "'privateKeySecretRef'"),
        (
            "Issuer",
            lambda i: i["spec"].update(
                acme={
                    "server": "https://acme.example/directory",
                    "privateKeySecretRef": {"name": "acme"},
                    "solvers": [{"http01": {"ingress": {}}}],
                }
            ),
            "HTTP01 solver, whose schema was not vendored",
        ),
    ],
)
def test_crd_validation_rejects_a_broken_cert_manager_object(
    kind: str, spoil: Callable[[Obj], object], expected: str
) -> None:
    original = rendering("production").named(kind, "tiergen-ca" if kind == "Issuer" else "ledger")
    assert original is not None and schema_errors(original, SCHEMA_VERSIONS[0]) == []
    obj = copy.deepcopy(original)
    spoil(obj)
    for version in SCHEMA_VERSIONS:
        errors = schema_errors(obj, version)
        assert any(expected in error for error in errors), errors


def test_a_custom_kind_without_a_vendored_schema_is_not_waved_through() -> None:
    issuer = copy.deepcopy(rendering("production").named("Issuer", "tiergen-ca"))
    assert issuer is not None
    issuer["kind"] = "ClusterIssuer"
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        schema_errors(issuer, SCHEMA_VERSIONS[0])


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda d: main_container(d).update(readinessProbes={}), id="misspelt-field"),
        pytest.param(
            lambda d: pod_spec(d).update(terminationGracePeriodSeconds="45"), id="string-for-int"
        ),
        pytest.param(lambda d: d["spec"].pop("selector"), id="missing-selector"),
    ],
)
def test_schema_validation_rejects_a_broken_deployment(spoil: Callable[[Obj], object]) -> None:
    deployment = copy.deepcopy(rendering("production").deployments["router"])
    spoil(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[0], strict=True)


def test_each_overlay_runs_the_four_services(overlay: Rendering) -> None:
    assert sorted(overlay.deployments) == sorted(GRPC_SERVICES)
    services = [service["metadata"]["name"] for service in overlay.of_kind("Service")]
    assert sorted(services) == sorted(GRPC_SERVICES)


# -- pods --


def test_every_pod_is_hardened(overlay: Rendering) -> None:
    assert [p for d in overlay.deployments.values() for p in security_problems(d)] == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"readOnlyRootFilesystem": False}, "root filesystem is writable"),
        ({"runAsNonRoot": False}, "runAsNonRoot"),
        ({"runAsUser": 0}, "numeric non-root id"),
        ({"allowPrivilegeEscalation": True}, "escalation"),
        ({"privileged": True}, "privileged"),
        ({"capabilities": {"drop": ["NET_RAW"]}}, "not all dropped"),
        ({"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}, "adds capabilities"),
        ({"seccompProfile": {"type": "Unconfined"}}, "seccomp"),
    ],
)
def test_hardening_check_catches_a_container(change: Obj, expected: str) -> None:
    deployment = copy.deepcopy(rendering("production").deployments["generator"])
    main_container(deployment)["securityContext"].update(change)
    assert any(expected in problem for problem in security_problems(deployment))


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (lambda p: p.pop("automountServiceAccountToken"), "service account token"),
        (lambda p: p.update(hostNetwork=True), "hostNetwork"),
        (lambda p: p["containers"][0].update(volumeMounts=[]), "/tmp"),
        (lambda p: p["volumes"].clear(), "/tmp"),
    ],
)
def test_hardening_check_catches_a_pod(spoil: Callable[[Obj], object], expected: str) -> None:
    deployment = copy.deepcopy(rendering("production").deployments["generator"])
    spoil(pod_spec(deployment))
    assert any(expected in problem for problem in security_problems(deployment))


def test_every_deployment_probes_grpc_health(overlay: Rendering) -> None:
    assert [p for d in overlay.deployments.values() for p in probe_problems(d)] == []


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (lambda c: c.pop("livenessProbe"), "no gRPC liveness probe"),
        (lambda c: c.update(readinessProbe={"tcpSocket": {"port": 50053}}), "no gRPC readiness"),
        (lambda c: c["startupProbe"]["grpc"].update(port=8080), "startup probe checks port 8080"),
        (lambda c: c.update(livenessProbe=copy.deepcopy(c["readinessProbe"])), "identical"),
        (lambda c: c["readinessProbe"]["grpc"].update(service=""), "readiness checks ''"),
        (lambda c: c["livenessProbe"].update(periodSeconds=1, failureThreshold=1), "no later"),
        # The gRPC port speaks TLS only, which the kubelet's probes cannot.
        (lambda c: c["readinessProbe"]["grpc"].update(port=50053), "readiness probe checks port"),
        (lambda c: c["env"].remove(env_of(c)["TIERGEN_HEALTH_PORT"]), "TIERGEN_HEALTH_PORT"),
    ],
)
def test_probe_check_catches(spoil: Callable[[Obj], object], expected: str) -> None:
    deployment = copy.deepcopy(rendering("production").deployments["ledger"])
    spoil(main_container(deployment))
    assert any(expected in problem for problem in probe_problems(deployment))


def test_probes_keep_their_timing_on_the_health_port(overlay: Rendering) -> None:
    # As before the health port moved (docs/deploy.md, "Probes"): only the port changed.
    timing = {
        "startupProbe": {"periodSeconds": 2, "failureThreshold": 30},
        "readinessProbe": {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3},
    }
    for name, deployment in overlay.deployments.items():
        container = main_container(deployment)
        for kind, expected in timing.items():
            probe = container[kind]
            assert {key: probe.get(key) for key in expected} == expected, f"{name}: {kind}"
            assert probe["grpc"]["port"] == HEALTH_PORT, f"{name}: {kind}"


def test_termination_waits_for_the_pre_stop_pause_and_the_drain(overlay: Rendering) -> None:
    assert [p for d in overlay.deployments.values() for p in shutdown_problems(d)] == []
    spoiled = copy.deepcopy(overlay.deployments["router"])
    pod_spec(spoiled)["terminationGracePeriodSeconds"] = 30
    assert shutdown_problems(spoiled) != []


def test_each_service_runs_its_module_on_its_port_in_one_image(overlay: Rendering) -> None:
    images = set()
    for name, deployment in overlay.deployments.items():
        container = main_container(deployment)
        images.add(container["image"])
        assert container["command"] == ["python", "-m", f"services.{name}"]
        assert grpc_port(container) == DEFAULT_PORTS[name]
        assert env_value(container, "TIERGEN_PORT") == str(DEFAULT_PORTS[name])
        assert env_value(container, "OTEL_SERVICE_NAME") == f"tiergen-{name}"
        assert {"configMapRef": {"name": telemetry_config(overlay)["metadata"]["name"]}} in (
            container["envFrom"]
        )
    assert len(images) == 1, f"one image for every service, found {images}"


def test_the_services_accept_every_setting_the_manifests_give(
    overlay: Rendering, tmp_path: Path
) -> None:
    telemetry = telemetry_config(overlay)["data"]
    # A file of the external Secret stands in as the kind of DSN it must hold.
    placeholder = tmp_path / "dsn"
    placeholder.write_text("postgresql://secret-placeholder/db\n")
    for name, deployment in overlay.deployments.items():
        container = main_container(deployment)
        environ = {**telemetry}
        for entry in container["env"]:
            environ[entry["name"]] = entry.get("value", "postgresql://secret-placeholder/db")
            if entry["name"].endswith("_DSN_FILE"):
                environ[entry["name"]] = str(placeholder)
        settings = ServerSettings.from_env(name, environ)
        assert settings.port == grpc_port(container)
        # TLS on the gRPC port (mutual for the backends), plaintext health for the kubelet.
        assert settings.tls is not None and not settings.insecure, name
        assert (settings.tls.client_ca is not None) == (name in BACKENDS), name
        assert settings.health_port == container_port(container, "health") == HEALTH_PORT
        if name in BACKENDS:
            assert settings.allowed_callers == {ROUTER_IDENTITY}, name
        # Its calls trust the deployment's CA and present its own certificate.
        calls = ChannelSecurity.from_env(environ)
        calls.require_ca("the manifests' services")
        assert calls.ca is not None and calls.certificate == settings.tls.certificate, name
        for variable in environ:
            if variable.endswith("_ADDR"):
                Env(environ).address(variable)
        if name == "ledger":
            LedgerSettings.from_env(environ)
        if name == "upscaler":
            assert UpscalerSettings.from_env(environ).workers == quantity(
                container["resources"]["limits"]["cpu"]
            )


def test_every_container_has_bounded_resources(overlay: Rendering) -> None:
    for name, deployment in overlay.deployments.items():
        resources = main_container(deployment)["resources"]
        for resource in ("cpu", "memory"):
            request = quantity(resources["requests"][resource])
            limit = quantity(resources["limits"][resource])
            assert 0 < request <= limit, f"{name}: {resource} request {request} > limit {limit}"
    # A 4K upscale holds tens of MiB of pixels per worker, twice over while it streams out.
    upscaler = main_container(overlay.deployments["upscaler"])["resources"]
    assert quantity(upscaler["limits"]["memory"]) >= quantity("1Gi")


@pytest.mark.parametrize(
    ("text", "value"), [("250m", 0.25), ("2", 2.0), ("1536Mi", 1536 * 2**20), (3, 3.0)]
)
def test_quantity_reads_kubernetes_notation(text: str | int, value: float) -> None:
    assert quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "1.5.2", "12Xi", "-1", "Mi"])
def test_quantity_rejects_what_kubernetes_would(text: str) -> None:
    with pytest.raises(ValueError, match="not a resource quantity"):
        quantity(text)


# -- wiring --


def test_every_service_port_is_named_grpc_and_reaches_a_grpc_container_port(
    overlay: Rendering,
) -> None:
    for service in overlay.of_kind("Service"):
        name = service["metadata"]["name"]
        (target,) = selected_deployments(overlay, service["spec"]["selector"])
        container_port = grpc_port(main_container(overlay.deployments[target]))
        # Besides gRPC, only the metrics port the ServiceMonitors scrape (test_deploy_monitoring).
        ports = [p for p in service["spec"]["ports"] if p["name"] != "metrics"]
        assert len(ports) == len(service["spec"]["ports"]) - 1, f"Service {name}: no metrics port"
        for port in ports:
            assert port["name"] == "grpc", f"Service {name}: port {port['port']} is not named grpc"
            assert port.get("targetPort") in {"grpc", container_port}
            if service["spec"].get("clusterIP") == "None":
                # Headless: clients dial pod addresses directly, so nothing translates the port.
                assert port["port"] == container_port, f"Service {name}"


def test_router_addresses_point_at_the_services_of_its_dependencies(overlay: Rendering) -> None:
    assert router_address_problems(overlay) == []


@pytest.mark.parametrize(
    ("variable", "address", "expected"),
    [
        ("LEDGER_ADDR", "ledgr:50053", "names no Service"),
        ("LEDGER_ADDR", "ledger:50054", "no such port"),
        ("GENERATOR_ADDR", "upscaler:50054", "does not select generator"),
        ("UPSCALER_ADDR", "upscaler.elsewhere.svc:50054", "leaves namespace"),
    ],
)
def test_router_address_check_catches(variable: str, address: str, expected: str) -> None:
    original = rendering("production")
    router = copy.deepcopy(original.deployments["router"])
    env_of(main_container(router))[variable]["value"] = address
    others = [obj for obj in original.objects if obj is not original.deployments["router"]]
    spoiled = Rendering(original.overlay, [*others, router])
    assert any(expected in problem for problem in router_address_problems(spoiled))


def test_every_reference_resolves(overlay: Rendering) -> None:
    assert reference_problems(overlay) == []


def test_reference_check_catches_a_missing_claim() -> None:
    original = rendering("dev")
    objects = [o for o in original.objects if o["kind"] != "PersistentVolumeClaim"]
    problems = reference_problems(Rendering("dev", objects))
    assert any("missing claim ledger-data" in problem for problem in problems)
    assert any("missing claim router-data" in problem for problem in problems)


def test_router_loads_the_mounted_price_table_and_policy(overlay: Rendering) -> None:
    router = overlay.deployments["router"]
    container = main_container(router)
    volumes = {v["name"]: v for v in pod_spec(router)["volumes"]}

    def mounted(variable: str) -> TomlSource:
        path = Path(env_value(container, variable) or "")
        (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
        assert mount.get("readOnly") is True
        config = overlay.named("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
        assert config is not None, f"{variable}: no ConfigMap behind {path}"
        return TomlSource(config["data"][path.name], str(path))

    # The router's own parsers: a file they refuse would stop every router pod at start.
    prices = PriceTable.parse(mounted("TIERGEN_ROUTER_PRICES_FILE"))
    RoutingPolicy.parse(mounted("TIERGEN_ROUTER_POLICY_FILE"), prices=prices)


def test_every_object_is_labelled_part_of_tiergen(overlay: Rendering) -> None:
    key, value = PART_OF
    for obj in overlay.objects:
        assert obj["metadata"].get("labels", {}).get(key) == value, obj["metadata"]["name"]
    for deployment in overlay.deployments.values():
        assert deployment["spec"]["template"]["metadata"]["labels"].get(key) == value
        # Selectors are immutable: a label added to every object later must not land in them.
        assert key not in deployment["spec"]["selector"]["matchLabels"]


# -- scaling --


def test_every_deployment_has_a_disruption_budget_and_fitting_autoscaling(
    overlay: Rendering,
) -> None:
    assert scaling_problems(overlay) == []


def test_scaling_check_catches() -> None:
    dev = rendering("dev")
    without_budget = [o for o in dev.objects if o["kind"] != "PodDisruptionBudget"]
    problems = scaling_problems(Rendering("dev", without_budget))
    assert sorted(problems) == [
        f"{n}: 0 PodDisruptionBudgets, expected one" for n in sorted(dev.deployments)
    ]

    production = rendering("production")
    without_hpa = [
        o
        for o in production.objects
        if not (o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == "router")
    ]
    assert scaling_problems(Rendering("production", without_hpa)) == [
        "router: 0 HorizontalPodAutoscalers, expected one"
    ]
    # A ScaledObject counts as the HPA KEDA makes of it: alongside base's HPA it is a second one.
    with_both = [*without_hpa, *rendering("dev").of_kind("HorizontalPodAutoscaler")]
    assert "generator: 2 HorizontalPodAutoscalers, expected one" in scaling_problems(
        Rendering("production", with_both)
    )
    objects = copy.deepcopy(dev.objects)
    ledger = Rendering("dev", objects).deployments["ledger"]
    ledger["spec"]["replicas"] = 2
    ledger["spec"]["strategy"] = {"type": "RollingUpdate"}
    problems = scaling_problems(Rendering("dev", objects))
    assert "ledger: on SQLite with replicas 2" in problems
    assert "ledger: on SQLite but a rollout would run two pods at once" in problems


def test_dev_runs_one_replica_of_each_service_with_sqlite_on_its_own_volume() -> None:
    dev = rendering("dev")
    for name, deployment in dev.deployments.items():
        hpa = dev.named("HorizontalPodAutoscaler", name)
        assert (deployment["spec"]["replicas"] if hpa is None else hpa["spec"]["minReplicas"]) == 1
    for name, variable in (("ledger", "TIERGEN_LEDGER_DSN"), ("router", "TIERGEN_ROUTER_DSN")):
        deployment = dev.deployments[name]
        dsn = env_value(main_container(deployment), variable) or ""
        assert dsn.startswith("sqlite:////"), f"{name}: {variable}={dsn!r}"
        database = Path(dsn.removeprefix("sqlite:///"))
        claims = {
            m["mountPath"]
            for m in main_container(deployment)["volumeMounts"]
            for v in pod_spec(deployment)["volumes"]
            if v["name"] == m["name"] and "persistentVolumeClaim" in v
        }
        assert any(database.is_relative_to(path) for path in claims), f"{name}: {dsn} not on a PVC"
    namespace = dev.of_kind("Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_production_runs_at_least_two_of_each_on_postgres_and_shared_assets() -> None:
    production = rendering("production")
    for name in GRPC_SERVICES:
        hpa = autoscaler_of(production, name)
        assert hpa is not None and hpa["spec"]["minReplicas"] >= 2, name
    for name, variable, key in (
        ("ledger", "TIERGEN_LEDGER_DSN", "ledger-dsn"),
        ("router", "TIERGEN_ROUTER_DSN", "router-dsn"),
    ):
        deployment = production.deployments[name]
        container = main_container(deployment)
        env = env_of(container)
        # The DSN is read from a file of the Secret, never held in the pod's environment.
        assert variable not in env, f"{name}: {variable} in the environment"
        dsn_file = Path(env[f"{variable}_FILE"]["value"])
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(dsn_file.parent)]
        assert mount.get("readOnly") is True and "subPath" not in mount, name
        (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
        # Only its own key: the ledger's pods never see the router's DSN, nor the reverse.
        assert volume["secret"] == {
            "secretName": "tiergen-postgres",
            "items": [{"key": key, "path": dsn_file.name}],
            "defaultMode": 0o440,
        }, name
    # The assets are in object storage (tests/deploy/test_deploy_operations.py checks how).
    assert production.named("PersistentVolumeClaim", "router-data") is None
    assert "TIERGEN_ROUTER_ASSETS_URL" in env_of(main_container(production.deployments["router"]))


# -- telemetry and secrets --


def test_dev_exports_no_traces_and_production_exports_to_the_collector() -> None:
    assert telemetry_config(rendering("dev"))["data"]["OTEL_TRACES_EXPORTER"] == "none"
    production = telemetry_config(rendering("production"))["data"]
    assert production["OTEL_TRACES_EXPORTER"] == "otlp"
    assert re.fullmatch(r"https?://[a-z0-9.-]+:\d+", production["OTEL_EXPORTER_OTLP_ENDPOINT"])


def test_every_pod_serves_metrics_where_its_scrape_annotations_point(overlay: Rendering) -> None:
    for name, deployment in overlay.deployments.items():
        container = main_container(deployment)
        settings = ServerSettings.from_env(
            name, {k: e.get("value", "") for k, e in env_of(container).items()}
        )
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert settings.metrics_port == int(annotations["prometheus.io/port"]) == ports["metrics"]
        assert annotations["prometheus.io/path"] == "/metrics"


def test_no_secret_value_is_rendered(overlay: Rendering) -> None:
    assert secret_problems(overlay.objects) == []


def test_secret_check_catches_a_password() -> None:
    ledger = copy.deepcopy(rendering("dev").deployments["ledger"])
    env_of(main_container(ledger))["TIERGEN_LEDGER_DSN"]["value"] = (
        "postgresql://tiergen:hunter2@db:5432/ledger"
    )
    secret = {"kind": "Secret", "metadata": {"name": "tiergen-postgres"}, "data": {}}
    assert secret_problems([ledger, secret]) == [
        "Deployment ledger: TIERGEN_LEDGER_DSN holds a credential",
        "Secret tiergen-postgres: a Secret is committed",
    ]


def test_no_file_under_deploy_holds_a_secret() -> None:
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*kind:\s*Secret\s*$", text, re.MULTILINE), path
        assert "stringData" not in text, path
        assert not CREDENTIAL.search(text), path


# -- transport security --

#: The file of a cert-manager Secret each TLS variable must name.
TLS_FILES = {
    "TIERGEN_TLS_CERT_FILE": "tls.crt",
    "TIERGEN_TLS_KEY_FILE": "tls.key",
    "TIERGEN_CA_FILE": "ca.crt",
    "TIERGEN_TLS_CLIENT_CA_FILE": "ca.crt",
}
#: Go durations as cert-manager writes them: "720h", "1h30m", "90s".
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def duration_seconds(text: str) -> int:
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"not a duration: {text!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def namespace_of(rendering: Rendering) -> str:
    namespace: str = rendering.deployments["router"]["metadata"]["namespace"]
    return namespace


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def mounted_secret(deployment: Obj, variable: str) -> tuple[str | None, list[str]]:
    """The Secret whose file `variable` names, mounted so that its renewals reach the pod."""
    name = deployment["metadata"]["name"]
    container = main_container(deployment)
    value = env_value(container, variable)
    if value is None:
        return None, [f"{name}: {variable} is not set"]
    path = Path(value)
    problems = []
    if path.name != TLS_FILES[variable]:
        problems.append(f"{name}: {variable}={value} is not a Secret's {TLS_FILES[variable]}")
    mounts = [m for m in container.get("volumeMounts", []) if Path(m["mountPath"]) == path.parent]
    if len(mounts) != 1:
        return None, [*problems, f"{name}: {variable}: no volume mounted at {path.parent}"]
    (mount,) = mounts
    if "subPath" in mount or "subPathExpr" in mount:
        # A subPath mount is a copy made at start: a renewed certificate never reaches it.
        problems.append(f"{name}: {variable}: mounted with subPath, which renewals never reach")
    if mount.get("readOnly") is not True:
        problems.append(f"{name}: {variable}: its volume is mounted writable")
    volumes = {volume["name"]: volume for volume in pod_spec(deployment).get("volumes", [])}
    secret = volumes.get(mount["name"], {}).get("secret")
    if secret is None:
        return None, [*problems, f"{name}: {variable}: {path.parent} is not a Secret volume"]
    if "items" in secret:
        problems.append(f"{name}: {variable}: the Secret volume picks items")
    secret_name: str = secret["secretName"]
    return secret_name, problems


def tls_problems(rendering: Rendering) -> list[str]:
    """Every server serves TLS with the certificate cert-manager issues for its identity and
    Service names, mounted so that renewals reach it, and calls with it as client certificate;
    the backends require client certificates, the router's public port does not."""
    namespace = namespace_of(rendering)
    issued = {cert["spec"]["secretName"]: cert for cert in rendering.of_kind("Certificate")}
    problems = []
    for name, deployment in rendering.deployments.items():
        container = main_container(deployment)
        if truthy(env_value(container, "TIERGEN_INSECURE")):
            problems.append(f"{name}: TIERGEN_INSECURE serves plaintext")
        variables = set(TLS_FILES)
        if name not in BACKENDS:
            variables.remove("TIERGEN_TLS_CLIENT_CA_FILE")
            if env_value(container, "TIERGEN_TLS_CLIENT_CA_FILE") is not None:
                problems.append(f"{name}: requires client certificates of its public callers")
        secrets = set()
        for variable in sorted(variables):
            secret, found = mounted_secret(deployment, variable)
            problems.extend(found)
            if secret is not None:
                secrets.add(secret)
        if len(secrets) != 1:
            problems.append(f"{name}: its TLS files come from Secrets {sorted(secrets)}, not one")
            continue
        (secret,) = secrets
        certificate = issued.get(secret)
        if certificate is None:
            problems.append(f"{name}: no Certificate issues its Secret {secret}")
            continue
        spec = certificate["spec"]
        identity = service_identity(name)
        if spec.get("uris") != [identity]:
            problems.append(f"{name}: its certificate names {spec.get('uris')}, not {identity}")
        missing_usages = {"server auth", "client auth"} - set(spec.get("usages", []))
        if missing_usages:
            problems.append(f"{name}: its certificate lacks the usages {sorted(missing_usages)}")
        domain = f"{name}.{namespace}"
        wanted = {name, domain, f"{domain}.svc", f"{domain}.svc.cluster.local"}
        missing_names = wanted - set(spec.get("dnsNames", []))
        if missing_names:
            problems.append(f"{name}: its certificate lacks the DNS names {sorted(missing_names)}")
        if spec.get("isCA"):
            problems.append(f"{name}: its certificate is a CA")
    return problems


def certificate_problems(rendering: Rendering) -> list[str]:
    """One CA Issuer signs every certificate (so one ca.crt lets every service trust every
    other); dev bootstraps that CA itself, production takes the operator's from an external
    Secret; certificates renew well before they expire, with a new key each time."""
    problems = []
    issuers = {obj["metadata"]["name"]: obj["spec"] for obj in rendering.of_kind("Issuer")}
    by_secret = {cert["spec"]["secretName"]: cert for cert in rendering.of_kind("Certificate")}
    leaves = [c for c in rendering.of_kind("Certificate") if not c["spec"].get("isCA")]
    signers = {c["spec"]["issuerRef"]["name"] for c in leaves}
    if len(signers) != 1:
        return [f"leaf certificates are signed by {sorted(signers)}, not one CA"]
    (signer,) = signers
    ca_secret = issuers.get(signer, {}).get("ca", {}).get("secretName")
    if ca_secret is None:
        problems.append(f"Issuer {signer} is not a CA Issuer")
    elif ca_secret in EXTERNAL_SECRETS[rendering.overlay]:
        if ca_secret in by_secret:
            problems.append(f"the external CA Secret {ca_secret} is also issued here")
    else:
        ca = by_secret.get(ca_secret)
        if ca is None or not ca["spec"].get("isCA"):
            problems.append(f"no CA Certificate issues {ca_secret}")
        elif "selfSigned" not in issuers.get(ca["spec"]["issuerRef"]["name"], {}):
            problems.append(f"the CA {ca['metadata']['name']} is not self-signed")
    for certificate in rendering.of_kind("Certificate"):
        where = f"Certificate {certificate['metadata']['name']}"
        spec = certificate["spec"]
        lifetime = duration_seconds(spec.get("duration", "2160h"))
        renew = duration_seconds(spec.get("renewBefore", "0s")) or lifetime // 3
        if lifetime < 3600:
            problems.append(f"{where}: lasts {spec['duration']}, under cert-manager's 1h minimum")
        if not 300 <= renew < lifetime:
            problems.append(
                f"{where}: renewBefore {spec.get('renewBefore')} is not within 5m..duration"
            )
        key = spec.get("privateKey", {})
        if not spec.get("isCA") and key.get("rotationPolicy") != "Always":
            problems.append(f"{where}: a renewal keeps the old private key")
    return problems


def identity_problems(rendering: Rendering) -> list[str]:
    """The identities the backends admit are those the Certificates issue: the router's to every
    backend, and the operator commands' to the ledger's Grant, mounted in the ledger alone."""
    problems = []
    issued = {
        uri: cert
        for cert in rendering.of_kind("Certificate")
        for uri in cert["spec"].get("uris", [])
    }
    for name in BACKENDS:
        container = main_container(rendering.deployments[name])
        callers = env_value(container, "TIERGEN_ALLOWED_CALLERS")
        if callers is None or {c.strip() for c in callers.split(",")} != {ROUTER_IDENTITY}:
            problems.append(f"{name}: TIERGEN_ALLOWED_CALLERS={callers!r}, not the router alone")
    ledger = main_container(rendering.deployments["ledger"])
    if env_value(ledger, "TIERGEN_LEDGER_ADMIN_IDENTITIES") != ADMIN_IDENTITY:
        problems.append(f"ledger: TIERGEN_LEDGER_ADMIN_IDENTITIES is not {ADMIN_IDENTITY}")
    for identity in (ROUTER_IDENTITY, ADMIN_IDENTITY):
        if identity not in issued:
            problems.append(f"no Certificate issues {identity}")
    admin = issued.get(ADMIN_IDENTITY)
    if admin is not None:
        if set(admin["spec"].get("usages", [])) & {"server auth"} or "client auth" not in admin[
            "spec"
        ].get("usages", []):
            problems.append("the admin certificate is not a client certificate only")
        secret = admin["spec"]["secretName"]
        holders = sorted(
            name
            for name, deployment in rendering.deployments.items()
            for volume in pod_spec(deployment).get("volumes", [])
            if volume.get("secret", {}).get("secretName") == secret
        )
        if holders != ["ledger"]:
            problems.append(f"the admin certificate is mounted in {holders}, not the ledger alone")
    return problems


def named(entries: list[Obj], name: str) -> Obj:
    """The entry of a list of volumes, mounts or env entries called `name`."""
    (entry,) = [e for e in entries if e["name"] == name]
    return entry


def test_every_server_serves_tls_with_the_certificate_of_its_identity(overlay: Rendering) -> None:
    assert tls_problems(overlay) == []


@pytest.mark.parametrize(
    ("service", "spoil", "expected"),
    [
        (
            "ledger",
            lambda d: named(main_container(d)["volumeMounts"], "tls").update(subPath="tls.crt"),
            "subPath",
        ),
        (
            "ledger",
            lambda d: main_container(d)["env"].remove(
                env_of(main_container(d))["TIERGEN_TLS_CLIENT_CA_FILE"]
            ),
            "TIERGEN_TLS_CLIENT_CA_FILE is not set",
        ),
        (
            "generator",
            lambda d: main_container(d)["env"].append(
                {"name": "TIERGEN_INSECURE", "value": "true"}
            ),
            "plaintext",
        ),
        (
            "router",
            lambda d: main_container(d)["env"].append(
                {"name": "TIERGEN_TLS_CLIENT_CA_FILE", "value": "/etc/tiergen/tls/ca.crt"}
            ),
            "requires client certificates",
        ),
        (
            "upscaler",
            lambda d: env_of(main_container(d))["TIERGEN_TLS_KEY_FILE"].update(
                value="/etc/tiergen/tls/key.pem"
            ),
            "not a Secret's tls.key",
        ),
        (
            "upscaler",
            lambda d: named(pod_spec(d)["volumes"], "tls")["secret"].update(
                secretName="generator-tls"
            ),
            "names ['spiffe://tiergen/generator'], not spiffe://tiergen/upscaler",
        ),
        (
            "generator",
            lambda d: named(pod_spec(d)["volumes"], "tls")["secret"].update(
                secretName="handmade-tls"
            ),
            "no Certificate issues its Secret handmade-tls",
        ),
    ],
)
def test_tls_check_catches(service: str, spoil: Callable[[Obj], object], expected: str) -> None:
    original = rendering("production")
    deployment = copy.deepcopy(original.deployments[service])
    spoil(deployment)
    others = [obj for obj in original.objects if obj is not original.deployments[service]]
    problems = tls_problems(Rendering(original.overlay, [*others, deployment]))
    assert any(expected in problem for problem in problems), problems


def test_tls_check_catches_a_certificate_without_the_namespace_in_its_names() -> None:
    original = rendering("dev")
    objects = copy.deepcopy(original.objects)
    (ledger,) = [
        o for o in objects if o["kind"] == "Certificate" and o["metadata"]["name"] == "ledger"
    ]
    ledger["spec"]["dnsNames"] = ["ledger", "ledger.NAMESPACE.svc"]
    problems = tls_problems(Rendering("dev", objects))
    assert problems == [
        "ledger: its certificate lacks the DNS names"
        " ['ledger.tiergen-dev', 'ledger.tiergen-dev.svc', 'ledger.tiergen-dev.svc.cluster.local']"
    ]


def test_one_ca_signs_every_certificate_and_renewals_come_early(overlay: Rendering) -> None:
    assert certificate_problems(overlay) == []


def test_dev_bootstraps_its_ca_and_production_brings_its_own() -> None:
    dev, production = rendering("dev"), rendering("production")
    ca = dev.named("Certificate", "tiergen-ca")
    assert ca is not None and ca["spec"]["isCA"] is True
    assert production.named("Certificate", "tiergen-ca") is None
    issuer = production.named("Issuer", "tiergen-ca")
    assert issuer is not None and issuer["spec"] == {"ca": {"secretName": "tiergen-ca"}}


def test_certificate_check_catches() -> None:
    objects = copy.deepcopy(rendering("dev").objects)
    certificates = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Certificate"}
    certificates["router"]["spec"]["renewBefore"] = "800h"
    certificates["upscaler"]["spec"]["privateKey"]["rotationPolicy"] = "Never"
    problems = certificate_problems(Rendering("dev", objects))
    assert problems == [
        "Certificate router: renewBefore 800h is not within 5m..duration",
        "Certificate upscaler: a renewal keeps the old private key",
    ]
    certificates["ledger"]["spec"]["issuerRef"]["name"] = "tiergen-selfsigned"
    assert certificate_problems(Rendering("dev", objects)) == [
        "leaf certificates are signed by ['tiergen-ca', 'tiergen-selfsigned'], not one CA"
    ]


@pytest.mark.parametrize(("text", "seconds"), [("720h", 2592000), ("1h30m", 5400), ("90s", 90)])
def test_duration_seconds_reads_go_durations(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "30d", "h", "1.5h"])
def test_duration_seconds_rejects_what_cert_manager_would(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_seconds(text)


def test_the_backends_admit_the_identities_the_certificates_issue(overlay: Rendering) -> None:
    assert identity_problems(overlay) == []


def test_identity_check_catches() -> None:
    original = rendering("production")
    objects = copy.deepcopy(original.objects)
    spoiled = Rendering("production", objects)
    env_of(main_container(spoiled.deployments["generator"]))["TIERGEN_ALLOWED_CALLERS"]["value"] = (
        "spiffe://tiergen/router,spiffe://tiergen/upscaler"
    )
    router = spoiled.deployments["router"]
    pod_spec(router)["volumes"].append(
        {"name": "admin-tls", "secret": {"secretName": "tiergen-admin-tls"}}
    )
    assert identity_problems(spoiled) == [
        "generator: TIERGEN_ALLOWED_CALLERS='spiffe://tiergen/router,spiffe://tiergen/upscaler',"
        " not the router alone",
        "the admin certificate is mounted in ['ledger', 'router'], not the ledger alone",
    ]


# -- network policies --

#: The label of a namespace whose pods may call the router (docs/deploy.md, "NetworkPolicies").
CALLER_ACCESS = {"tiergen.io/router-access": "true"}


def endpoints(rendering: Rendering) -> dict[str, Endpoint]:
    """The pods of each Deployment, other pods in and out of the namespace, and addresses
    outside the cluster."""
    namespace = namespace_of(rendering)
    found = {
        name: Endpoint.pod(
            name,
            namespace,
            deployment["spec"]["template"]["metadata"]["labels"],
            ports={p["name"]: p["containerPort"] for p in main_container(deployment)["ports"]},
        )
        for name, deployment in rendering.deployments.items()
    }
    others = [
        # A tenant platform's namespace, labelled to call the router.
        Endpoint.pod("caller", "platform", {"app": "client"}, namespace_labels=CALLER_ACCESS),
        Endpoint.pod("stranger", "elsewhere", {"app": "client"}),
        # Another namespace's pod that borrows the router's labels.
        Endpoint.pod("impostor", "elsewhere", {"app.kubernetes.io/name": "router"}),
        # Any other pod that lands in the namespace.
        Endpoint.pod("neighbour", namespace, {"app": "debug"}, ports={"http": 8080}),
        Endpoint.pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
        Endpoint.pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, ports={"dns": 53}),
        Endpoint.pod("collector", "observability", {"app": "otel-collector"}),
        # A public address (TEST-NET-3 stands for any), a private one, the cloud metadata one.
        Endpoint.outside("internet", "203.0.113.10"),
        Endpoint.outside("private", "10.20.30.40"),
        Endpoint.outside("metadata", "169.254.169.254"),
    ]
    return {**found, **{endpoint.name: endpoint for endpoint in others}}


def designed_ingress(rendering: Rendering) -> set[tuple[str, str, str]]:
    """(source, destination, port) the design admits into the namespace's pods."""
    edges = {("caller", "router", "grpc")}
    edges |= {("router", backend, "grpc") for backend in BACKENDS}
    edges |= {("prometheus", name, "metrics") for name in rendering.deployments}
    return edges


def designed_egress(rendering: Rendering) -> set[tuple[str, str, str]]:
    """(source, destination, port) the design lets the namespace's pods open."""
    services = set(rendering.deployments)
    edges = {
        (name, "kube-dns", f"53/{protocol}") for name in services for protocol in ("UDP", "TCP")
    }
    edges |= {("router", backend, "grpc") for backend in BACKENDS}
    # The generator's providers, and the router's webhook deliveries (and, in production, its
    # object store), all HTTPS outside the private ranges.
    edges |= {("generator", "internet", "443/TCP"), ("router", "internet", "443/TCP")}
    if rendering.overlay == "production":
        edges |= {("ledger", "private", "5432/TCP"), ("router", "private", "5432/TCP")}
        edges |= {(name, "collector", "4317/TCP") for name in services}
    return edges


def reachable(rendering: Rendering, direction: str) -> set[tuple[str, str, str]]:
    """What the rendered policies allow in `direction`, over every pair the tests know."""
    policies = rendering.of_kind("NetworkPolicy")
    every = endpoints(rendering)
    found = set()
    if direction == "Ingress":
        # Into each pod of the namespace, on each of its ports, from everyone else.
        for destination in (*(every[name] for name in rendering.deployments), every["neighbour"]):
            for port_name, port in destination.ports.items():
                for source in every.values():
                    if source is not destination and allows(
                        policies, source, destination, port, direction="Ingress"
                    ):
                        found.add((source.name, destination.name, port_name))
        return found
    # Out of each service's pods, to every port of the services and to a few well-known ones.
    targets: list[tuple[Endpoint, str, int, str]] = []
    for name in [*rendering.deployments, "neighbour"]:
        targets += [
            (every[name], port_name, port, "TCP") for port_name, port in every[name].ports.items()
        ]
    for name, ports in {
        "kube-dns": (53,),
        "collector": (4317,),
        "prometheus": (9090,),
        "internet": (80, 443),
        "private": (443, 5432),
        "metadata": (80, 443),
        "stranger": (443,),
    }.items():
        for port in ports:
            for protocol in ("TCP", "UDP") if port == 53 else ("TCP",):
                targets.append((every[name], f"{port}/{protocol}", port, protocol))
    for source_name in rendering.deployments:
        source = every[source_name]
        for destination, label, port, protocol in targets:
            if destination is not source and allows(
                policies, source, destination, port, protocol, direction="Egress"
            ):
                found.add((source_name, destination.name, label))
    return found


def network_problems(rendering: Rendering) -> list[str]:
    """The NetworkPolicies allow exactly the designed edges, in and out, and no other."""
    problems = []
    policies = rendering.of_kind("NetworkPolicy")
    if not any(
        p["spec"]["podSelector"] == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ):
        problems.append("no policy denies every pod's ingress and egress by default")
    for direction, designed in (
        ("Ingress", designed_ingress(rendering)),
        ("Egress", designed_egress(rendering)),
    ):
        allowed = reachable(rendering, direction)
        for source, destination, port in sorted(allowed - designed):
            problems.append(f"{direction}: admits {source} -> {destination}:{port}")
        for source, destination, port in sorted(designed - allowed):
            problems.append(f"{direction}: refuses {source} -> {destination}:{port}")
    # The edges inside the namespace need both ends to agree.
    every = endpoints(rendering)
    for backend in BACKENDS:
        grpc = every[backend].ports["grpc"]
        if not allows(policies, every["router"], every[backend], grpc):
            problems.append(f"router cannot reach {backend}:{grpc}")
    return problems


def test_every_pod_is_isolated_by_a_network_policy_in_both_directions(overlay: Rendering) -> None:
    policies = overlay.of_kind("NetworkPolicy")
    for endpoint in endpoints(overlay).values():
        if endpoint.namespace != namespace_of(overlay):
            continue
        for direction in ("Ingress", "Egress"):
            isolating = governing(policies, endpoint, direction)
            assert any(p["metadata"]["name"] == "default-deny" for p in isolating), endpoint.name
            if endpoint.name in overlay.deployments and direction == "Ingress":
                # And a policy of its own says who may call it.
                assert any(p["spec"]["podSelector"] != {} for p in isolating), endpoint.name


def test_the_network_policies_allow_exactly_the_designed_edges(overlay: Rendering) -> None:
    assert network_problems(overlay) == []


def test_only_the_routers_pods_reach_the_ledger_and_prometheus_its_metrics(
    overlay: Rendering,
) -> None:
    ledger_ingress = {edge for edge in reachable(overlay, "Ingress") if edge[1] == "ledger"}
    assert ledger_ingress == {("router", "ledger", "grpc"), ("prometheus", "ledger", "metrics")}


def _policy(objects: list[Obj], name: str) -> Obj:
    (policy,) = [
        o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == name
    ]
    return policy


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (
            lambda objects: objects.remove(_policy(objects, "default-deny")),
            [
                "no policy denies every pod's ingress and egress by default",
                "Ingress: admits caller -> neighbour:http",
            ],
        ),
        (
            # Every namespace, not just the router's pods.
            lambda objects: _policy(objects, "ledger-ingress")["spec"]["ingress"][0]["from"].append(
                {"namespaceSelector": {}}
            ),
            ["Ingress: admits caller -> ledger:grpc", "Ingress: admits impostor -> ledger:grpc"],
        ),
        (
            # The router's label alone, in any namespace.
            lambda objects: _policy(objects, "generator-ingress")["spec"]["ingress"][0]["from"][
                0
            ].update(namespaceSelector={}),
            ["Ingress: admits impostor -> generator:grpc"],
        ),
        (
            lambda objects: _policy(objects, "metrics-ingress")["spec"]["ingress"][0].pop("ports"),
            [
                "Ingress: admits prometheus -> ledger:health",
                "Ingress: admits prometheus -> ledger:grpc",
            ],
        ),
        (
            lambda objects: objects.remove(_policy(objects, "router-egress")),
            ["Egress: refuses router -> ledger:grpc", "router cannot reach ledger:50053"],
        ),
        (
            lambda objects: _policy(objects, "generator-egress")["spec"]["egress"][0]["to"][0][
                "ipBlock"
            ].pop("except"),
            [
                "Egress: admits generator -> metadata:443/TCP",
                "Egress: admits generator -> private:443/TCP",
            ],
        ),
        (
            lambda objects: _policy(objects, "dns-egress")["spec"]["egress"][0]["ports"].pop(0),
            ["Egress: refuses ledger -> kube-dns:53/UDP"],
        ),
    ],
)
def test_network_check_catches(spoil: Callable[[list[Obj]], object], expected: list[str]) -> None:
    objects = copy.deepcopy(rendering("production").objects)
    spoil(objects)
    problems = network_problems(Rendering("production", objects))
    assert set(expected) <= set(problems), problems


@pytest.mark.parametrize(
    ("peer", "port", "expected"),
    [
        (
            {
                "podSelector": {
                    "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]
                }
            },
            80,
            True,
        ),
        ({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}, 80, False),
        ({"namespaceSelector": {"matchLabels": {"team": "a"}}}, 80, False),
        ({"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}, 80, True),
        ({"ipBlock": {"cidr": "0.0.0.0/0"}}, 80, False),
        ({"podSelector": {}}, 81, True),
        ({"podSelector": {}}, 90, False),
    ],
)
def test_the_policy_model_follows_the_api(peer: Obj, port: int, expected: bool) -> None:
    policy = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "a"},
        # No policyTypes: Ingress, as the API defaults it when there is no egress.
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [peer], "ports": [{"port": "http", "endPort": 81}]}],
        },
    }
    web = Endpoint.pod("web", "b", {"app": "web"})
    database = Endpoint.pod("db", "a", {"app": "db"}, ports={"http": 80})
    if "podSelector" in peer and "namespaceSelector" not in peer:
        web = Endpoint.pod("web", "a", {"app": "web"})
    assert allows([policy], web, database, port) is expected
    # Egress is not isolated by an Ingress-only policy.
    assert allows([policy], database, web, port, direction="Egress")
