"""Renders each Kustomize overlay, validates it offline against the Kubernetes schemas and checks
the rules Tiergen's deployment depends on: hardened pods, gRPC probes, wiring, scaling, secrets."""

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
from services.runtime.settings import DEFAULT_PORTS, Env, ServerSettings
from services.upscaler.settings import UpscalerSettings

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
#: Secrets the overlays reference but that are created outside the repository.
EXTERNAL_SECRETS = frozenset({"tiergen-postgres"})
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


@functools.cache
def rendering(overlay: str) -> Rendering:
    directory = KUSTOMIZE / "overlays" / overlay
    result = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return Rendering(overlay, [doc for doc in yaml.safe_load_all(result.stdout) if doc])


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


def grpc_port(container: Obj) -> int:
    ports = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == "grpc"]
    assert len(ports) == 1, f"{container['name']}: expected one container port named grpc"
    port: int = ports[0]
    return port


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
    """Native gRPC health probes: readiness on the service, liveness on the whole server."""
    name = deployment["metadata"]["name"]
    container = main_container(deployment)
    port = grpc_port(container)
    problems = []
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


def scaling_problems(rendering: Rendering) -> list[str]:
    """A PDB for every Deployment; an HPA for every one that may run several replicas, and none,
    with exactly one pod replaced by Recreate, for one whose store is a SQLite file."""
    problems = []
    autoscalers = rendering.of_kind("HorizontalPodAutoscaler")
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
    secrets = {obj["metadata"]["name"] for obj in rendering.of_kind("Secret")} | EXTERNAL_SECRETS
    for name, deployment in rendering.deployments.items():
        pod = pod_spec(deployment)
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
                problems.append(f"{name}: volume {volume['name']} names a missing ConfigMap")
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim is not None and claim not in claims:
                problems.append(f"{name}: volume {volume['name']} names missing claim {claim}")
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


def test_every_rendered_object_matches_the_kubernetes_schemas(overlay: Rendering) -> None:
    errors = []
    for obj in overlay.objects:
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = f"{obj['kind']}/{obj['metadata']['name']} @ {version}"
                path = ".".join(str(part) for part in error.path)
                errors.append(f"{where}: {path}: {error.message}")
    assert errors == []


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
    ],
)
def test_probe_check_catches(spoil: Callable[[Obj], object], expected: str) -> None:
    deployment = copy.deepcopy(rendering("production").deployments["ledger"])
    spoil(main_container(deployment))
    assert any(expected in problem for problem in probe_problems(deployment))


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


def test_the_services_accept_every_setting_the_manifests_give(overlay: Rendering) -> None:
    telemetry = telemetry_config(overlay)["data"]
    for name, deployment in overlay.deployments.items():
        container = main_container(deployment)
        environ = {**telemetry}
        for entry in container["env"]:
            # A value from the external Secret stands in as the kind of DSN it must hold.
            environ[entry["name"]] = entry.get("value", "postgresql://secret-placeholder/db")
        settings = ServerSettings.from_env(name, environ)
        assert settings.port == grpc_port(container)
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
        for port in service["spec"]["ports"]:
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
        if not (o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == "generator")
    ]
    assert scaling_problems(Rendering("production", without_hpa)) == [
        "generator: 0 HorizontalPodAutoscalers, expected one"
    ]
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
        hpa = production.named("HorizontalPodAutoscaler", name)
        assert hpa is not None and hpa["spec"]["minReplicas"] >= 2, name
    for name, variable, key in (
        ("ledger", "TIERGEN_LEDGER_DSN", "ledger-dsn"),
        ("router", "TIERGEN_ROUTER_DSN", "router-dsn"),
    ):
        entry = env_of(main_container(production.deployments[name]))[variable]
        assert entry["valueFrom"]["secretKeyRef"] == {"name": "tiergen-postgres", "key": key}
    assets = production.named("PersistentVolumeClaim", "router-data")
    assert assets is not None and assets["spec"]["accessModes"] == ["ReadWriteMany"]


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
