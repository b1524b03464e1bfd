"""The production overlay's operations objects, checked offline like the rest of the manifests:
the schema migrations' Job (alone in the first step of a rollout, as the schema owner, reaching
PostgreSQL only), the router's assets in object storage (credentials from files, settings the
router accepts), and the ReadWriteMany alternative, overlays/production-rwx."""

from __future__ import annotations

import copy
import re
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from services.cli.migrate import SERVICES as MIGRATED
from services.router.settings import S3AssetSettings
from tests.deploy.network_policy import Endpoint, allows
from tests.deploy.test_deploy_manifests import (
    KUSTOMIZE,
    PART_OF,
    REPO,
    SCHEMA_VERSIONS,
    Obj,
    Rendering,
    endpoints,
    env_of,
    main_container,
    namespace_of,
    network_problems,
    pod_spec,
    reference_problems,
    render,
    rendering,
    schema_errors,
    security_problems,
)

MIGRATE_SELECTOR = ("app.kubernetes.io/component", "migrate")
JOB = "tiergen-migrate"
#: The Secret of the schema owner's DSNs, mounted by the migrations' Job alone.
OWNER_SECRET = "tiergen-postgres-owner"
RUNTIME_SECRET = "tiergen-postgres"
OBJECT_STORAGE_SECRET = "tiergen-object-storage"
S3_VARIABLES = ("TIERGEN_ROUTER_ASSETS_URL", "TIERGEN_ROUTER_S3_ENDPOINT_URL", "AWS_REGION")
CREDENTIAL_FILES = {
    "AWS_ACCESS_KEY_ID_FILE": "access-key-id",
    "AWS_SECRET_ACCESS_KEY_FILE": "secret-access-key",
}


def the_job(objects: Rendering) -> Obj:
    job = objects.named("Job", JOB)
    assert job is not None, f"{objects.overlay}: no Job {JOB}"
    return job


def secret_files(workload: Obj, container: Obj) -> dict[str, tuple[str, Obj]]:
    """Mount path -> (the Secret's name, the mount) of each Secret volume `container` mounts."""
    volumes = {volume["name"]: volume for volume in pod_spec(workload).get("volumes", [])}
    found = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            found[mount["mountPath"]] = (secret["secretName"], mount)
    return found


def file_problems(workload: Obj, container: Obj, variables: dict[str, str]) -> list[str]:
    """Each variable names a file of a whole Secret volume mounted read-only, mode 0440."""
    problems = []
    mounted = secret_files(workload, container)
    volumes = {volume["name"]: volume for volume in pod_spec(workload).get("volumes", [])}
    env = env_of(container)
    for variable, secret_name in variables.items():
        value = env.get(variable, {}).get("value")
        if value is None:
            problems.append(f"{variable} is not set to a path")
            continue
        path = Path(value)
        if str(path.parent) not in mounted:
            problems.append(f"{variable}={value}: no Secret mounted at {path.parent}")
            continue
        name, mount = mounted[str(path.parent)]
        volume = volumes[mount["name"]]["secret"]
        if name != secret_name:
            problems.append(f"{variable}={value}: in Secret {name}, not {secret_name}")
        if mount.get("readOnly") is not True or "subPath" in mount or "items" in volume:
            problems.append(f"{variable}: not a whole Secret mounted read-only")
        if volume.get("defaultMode") != 0o440:
            problems.append(f"{variable}: its files are not mode 0440")
    return problems


# -- the migrations' Job --


def test_the_first_step_of_a_rollout_applies_the_job_and_its_policy_alone() -> None:
    production = rendering("production")
    key, value = MIGRATE_SELECTOR
    selected = {
        (obj["kind"], obj["metadata"]["name"])
        for obj in production.objects
        if obj["metadata"].get("labels", {}).get(key) == value
    }
    assert selected == {("Job", JOB), ("NetworkPolicy", "migrate-database-egress")}
    # The commands of docs/deploy.md name this selector, this Job and its namespace.
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    namespace = namespace_of(production)
    for command in (
        f"kubectl -n {namespace} delete job {JOB} --ignore-not-found",
        f"kubectl apply -k . -l {key}={value}",
        f"kubectl -n {namespace} wait --for=condition=complete job/{JOB} --timeout=15m",
    ):
        assert command in doc, command
    # SQLite stores upgrade at open: dev has no Job.
    assert rendering("dev").of_kind("Job") == []


def test_the_job_runs_tiergen_migrate_as_the_schema_owner() -> None:
    production = rendering("production")
    job = the_job(production)
    (container,) = pod_spec(job)["containers"]
    assert container["command"] == ["tiergen", "migrate"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tiergen"] == "services.cli.main:main"
    # The release's image: the one the Deployments run.
    images = {main_container(d)["image"] for d in production.deployments.values()}
    assert images == {container["image"]}
    # Every database `tiergen migrate` knows, from the owner's Secret, as files.
    env = env_of(container)
    assert set(env) == {f"{service.dsn_variable}_FILE" for service in MIGRATED.values()}
    assert file_problems(job, container, dict.fromkeys(env, OWNER_SECRET)) == []
    # One key per service, named as in the runtime Secret the Deployments read.
    runtime_keys = {
        item["key"]
        for deployment in production.deployments.values()
        for volume in pod_spec(deployment).get("volumes", [])
        if volume.get("secret", {}).get("secretName") == RUNTIME_SECRET
        for item in volume["secret"]["items"]
    }
    assert {Path(entry["value"]).name for entry in env.values()} == runtime_keys
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert 0 < job["spec"]["backoffLimit"] <= 3 and job["spec"]["activeDeadlineSeconds"] > 0
    assert security_problems(job) == []
    assert job["spec"]["template"]["metadata"]["labels"][PART_OF[0]] == PART_OF[1]


def secrets_in(node: object) -> set[str]:
    """The Secrets a pod spec names anywhere: volumes, projections, env and envFrom."""
    found = set()
    if isinstance(node, dict):
        if "secretName" in node:
            found.add(node["secretName"])
        for key in ("secretKeyRef", "secretRef", "secret"):
            if isinstance(node.get(key), dict) and "name" in node[key]:
                found.add(node[key]["name"])
        for value in node.values():
            found |= secrets_in(value)
    elif isinstance(node, list):
        for item in node:
            found |= secrets_in(item)
    return found


def test_no_serving_pod_can_reach_the_owners_credentials() -> None:
    production = rendering("production")
    for name, deployment in production.deployments.items():
        assert OWNER_SECRET not in secrets_in(pod_spec(deployment)), name
    assert secrets_in(pod_spec(the_job(production))) == {OWNER_SECRET}


def test_the_job_reaches_postgresql_and_nothing_else() -> None:
    production = rendering("production")
    policies = production.of_kind("NetworkPolicy")
    job = the_job(production)
    every = endpoints(production)
    pod = Endpoint.pod(JOB, namespace_of(production), job["spec"]["template"]["metadata"]["labels"])
    reached = {
        (name, port, protocol)
        for name in (*production.deployments, "kube-dns", "collector", "internet", "private")
        for port in (53, 443, 4317, 5432, *every[name].ports.values())
        for protocol in ("TCP", "UDP")
        if allows(policies, pod, every[name], port, protocol, direction="Egress")
    }
    assert reached == {
        ("private", 5432, "TCP"),
        ("kube-dns", 53, "UDP"),
        ("kube-dns", 53, "TCP"),
    }
    # Its peers are the services' own database peers: narrowing one means narrowing both.
    own = production.named("NetworkPolicy", "migrate-database-egress")
    services = production.named("NetworkPolicy", "database-egress")
    assert own is not None and services is not None
    assert own["spec"]["egress"] == services["spec"]["egress"]


def test_job_check_catches_a_job_reading_the_dsn_from_its_environment() -> None:
    job = copy.deepcopy(the_job(rendering("production")))
    (container,) = pod_spec(job)["containers"]
    container["env"][0] = {
        "name": "TIERGEN_LEDGER_DSN_FILE",
        "valueFrom": {"secretKeyRef": {"name": OWNER_SECRET, "key": "ledger-dsn"}},
    }
    pod_spec(job)["volumes"][0]["secret"]["defaultMode"] = 0o444
    assert file_problems(job, container, dict.fromkeys(env_of(container), OWNER_SECRET)) == [
        "TIERGEN_LEDGER_DSN_FILE is not set to a path",
        "TIERGEN_ROUTER_DSN_FILE: its files are not mode 0440",
    ]


# -- the router's assets --


def s3_environment(objects: Rendering, directory: Path) -> dict[str, str]:
    """The router's object-store variables as its pod would see them: values of the generated
    ConfigMap, and the credential files stood in by files in `directory`."""
    router = main_container(objects.deployments["router"])
    config_maps = {obj["metadata"]["name"]: obj["data"] for obj in objects.of_kind("ConfigMap")}
    environ = {}
    for variable, entry in env_of(router).items():
        ref = entry.get("valueFrom", {}).get("configMapKeyRef")
        if ref is not None:
            environ[variable] = config_maps[ref["name"]][ref["key"]]
        elif variable in CREDENTIAL_FILES:
            stand_in = directory / Path(entry["value"]).name
            stand_in.write_text(f"placeholder-{stand_in.name}\n")
            environ[variable] = str(stand_in)
    return environ


def test_production_keeps_the_routers_assets_in_object_storage(tmp_path: Path) -> None:
    production = rendering("production")
    router = production.deployments["router"]
    container = main_container(router)
    env = env_of(container)
    # No volume of the router's own: not the base's claim, not a local assets directory.
    assert production.of_kind("PersistentVolumeClaim") == []
    assert all("persistentVolumeClaim" not in v for v in pod_spec(router)["volumes"])
    assert "TIERGEN_ROUTER_ASSETS_DIR" not in env
    # Where, from the generated ConfigMap; the access key as files of the Secret only.
    for variable in S3_VARIABLES:
        assert "configMapKeyRef" in env[variable]["valueFrom"], variable
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert file_problems(router, container, dict.fromkeys(CREDENTIAL_FILES, "")) == [
        f"{variable}={env[variable]['value']}: in Secret {OBJECT_STORAGE_SECRET}, not "
        for variable in CREDENTIAL_FILES
    ]
    assert (
        file_problems(router, container, dict.fromkeys(CREDENTIAL_FILES, OBJECT_STORAGE_SECRET))
        == []
    )
    assert {Path(env[v]["value"]).name for v in CREDENTIAL_FILES} == set(CREDENTIAL_FILES.values())
    # The router accepts what the pod would be given.
    settings = S3AssetSettings.from_env(s3_environment(production, tmp_path))
    assert settings is not None
    assert (settings.bucket, settings.prefix, settings.endpoint_url) == (
        "tiergen-assets",
        "images",
        None,
    )
    assert settings.access_key_id == "placeholder-access-key-id"
    assert settings.secret_access_key == "placeholder-secret-access-key"
    # And reaches the store: HTTPS outside the private ranges.
    every = endpoints(production)
    policies = production.of_kind("NetworkPolicy")
    assert allows(policies, every["router"], every["internet"], 443, direction="Egress")


@pytest.mark.parametrize(
    "endpoint", ["http://minio.minio.svc.cluster.local:9000", "https://rgw.example.com"]
)
def test_an_s3_compatible_endpoint_is_one_setting(tmp_path: Path, endpoint: str) -> None:
    environ = {
        **s3_environment(rendering("production"), tmp_path),
        "TIERGEN_ROUTER_S3_ENDPOINT_URL": endpoint,
    }
    settings = S3AssetSettings.from_env(environ)
    assert settings is not None and settings.endpoint_url == endpoint


def test_the_documented_patch_points_the_router_at_a_store_in_the_cluster(
    tmp_path: Path,
) -> None:
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = doc.split("\n## Assets in object storage\n", 1)[1].split("\n## ", 1)[0]
    (patch,) = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)[0])
    # The production overlay as an operator's copy of the repository would hold it, patched.
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUSTOMIZE, tree)
    overlay = tree / "overlays" / "production"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kustomization["patches"].append(patch)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    patched = render(overlay, "production")
    every = endpoints(patched)
    policies = patched.of_kind("NetworkPolicy")
    minio = Endpoint.pod("minio", "minio", {"app.kubernetes.io/name": "minio"})
    assert allows(policies, every["router"], minio, 9000, direction="Egress")
    for destination, port in ((minio, 443), (every["private"], 9000)):
        assert not allows(policies, every["router"], destination, port, direction="Egress")
    # HTTPS outside the cluster stays open through `router-webhook-egress`: the webhooks.
    webhooks = [p for p in policies if p["metadata"]["name"] != "router-webhook-egress"]
    assert not allows(webhooks, every["router"], every["internet"], 443, direction="Egress")
    for version in SCHEMA_VERSIONS:
        for policy in policies:
            assert schema_errors(policy, version) == []


# -- the ReadWriteMany alternative --


def rwx() -> Rendering:
    """overlays/production-rwx, checked by the production overlay's rules."""
    return Rendering("production", rendering("production-rwx").objects)


def test_the_rwx_alternative_matches_the_schemas_and_the_rules() -> None:
    variant = rwx()
    for obj in variant.objects:
        for version in SCHEMA_VERSIONS:
            assert schema_errors(obj, version) == [], (obj["kind"], obj["metadata"]["name"])
        assert obj["metadata"].get("labels", {}).get(PART_OF[0]) == PART_OF[1], obj
    for deployment in variant.deployments.values():
        assert security_problems(deployment) == []
    assert reference_problems(variant) == []
    # It drops the object store's policy; HTTPS outside stays open for the webhooks.
    assert network_problems(variant) == []
    assert variant.named("NetworkPolicy", "router-object-storage-egress") is None


def test_the_rwx_alternative_keeps_assets_on_one_shared_claim() -> None:
    variant = rwx()
    (claim,) = variant.of_kind("PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "router-data"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    router = variant.deployments["router"]
    container = main_container(router)
    env = env_of(container)
    assert not {*S3_VARIABLES, *CREDENTIAL_FILES} & set(env)
    claimed = {v["name"] for v in pod_spec(router)["volumes"] if "persistentVolumeClaim" in v}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] in claimed]
    assert Path(env["TIERGEN_ROUTER_ASSETS_DIR"]["value"]).is_relative_to(mount["mountPath"])
    assert OBJECT_STORAGE_SECRET not in secrets_in(pod_spec(router))
    # Everything but the router, its claim and its object-store policy is production's own.
    changed = {
        ("Deployment", "router"),
        ("PersistentVolumeClaim", "router-data"),
        ("NetworkPolicy", "router-object-storage-egress"),
    }

    def rest(objects: list[Obj]) -> list[Obj]:
        return [o for o in objects if (o["kind"], o["metadata"]["name"]) not in changed]

    assert rest(variant.objects) == rest(rendering("production").objects)
