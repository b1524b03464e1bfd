"""Offline validation of custom resources (cert-manager's, the Prometheus Operator's and KEDA's)
against the CRD schemas vendored in `tests/deploy/crds/` (where they come from: its README).

`kubernetes-validate` ships the built-in kinds only. This checks a custom resource the way the
API server does on `kubectl apply` (whose default is `--validate=strict`): the CRD's structural
schema, where a field the schema does not name is an error rather than silently pruned;
`metadata` against the `ObjectMeta` of the Kubernetes version under test, from
`kubernetes-validate`'s own definitions; the `int32`, `int64`, `byte` and `date-time` formats.
A field under a subtree that was not vendored (`x-tiergen-trimmed`) is refused, so nothing
passes unchecked.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import yaml
from kubernetes_validate.utils import all_versions, major_minor  # type: ignore[import-untyped]
from referencing import Registry, Resource

__all__ = ["CRDS", "SCHEMAS", "covers", "crd_errors"]

CRDS = Path(__file__).with_name("crds")
#: The custom kinds the overlays use, each with its vendored schema.
SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): CRDS / "cert-manager.io" / "certificates.v1.yaml",
    ("cert-manager.io/v1", "Issuer"): CRDS / "cert-manager.io" / "issuers.v1.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        CRDS / "monitoring.coreos.com" / "servicemonitors.v1.yaml"
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        CRDS / "monitoring.coreos.com" / "prometheusrules.v1.yaml"
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): CRDS / "keda.sh" / "scaledobjects.v1alpha1.yaml",
}
#: Marks a vendored subtree left out; its value says what it was.
TRIMMED = "x-tiergen-trimmed"
_OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

Obj = dict[str, Any]


def covers(obj: Obj) -> bool:
    """Whether `obj` is of a custom kind with a vendored schema."""
    return (obj.get("apiVersion"), obj.get("kind")) in SCHEMAS


def _strict(schema: Obj) -> Obj:
    """The schema with every object that lists its properties closed to others, as the API
    server's strict field validation treats them (unless the schema keeps unknown fields)."""
    node = dict(schema)
    if "properties" in node:
        node["properties"] = {key: _strict(value) for key, value in node["properties"].items()}
        if "additionalProperties" not in node and not node.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            node["additionalProperties"] = False
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _strict(node["additionalProperties"])
    return node


@functools.cache
def _schema(api_version: str, kind: str) -> Obj:
    vendored = yaml.safe_load(SCHEMAS[(api_version, kind)].read_text(encoding="utf-8"))
    schema = _strict(vendored)
    schema["properties"]["apiVersion"] = {"type": "string", "const": api_version}
    schema["properties"]["kind"] = {"type": "string", "const": kind}
    schema["properties"]["metadata"] = {"$ref": _OBJECT_META}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return schema


@functools.cache
def _definitions(version: str) -> Resource[Any]:
    """kubernetes-validate's strict definitions for `version` (the newest it has at or below)."""
    known = [v for v in all_versions() if major_minor(v) <= major_minor(version)]
    if not known:
        raise ValueError(f"kubernetes-validate has no schemas for Kubernetes {version}")
    path = (
        resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{known[-1]}-local-strict"
        / "_definitions.json"
    )
    return Resource.from_contents(json.loads(path.read_text(encoding="utf-8")))


def _trimmed(
    validator: Any, what: str, instance: object, schema: Obj
) -> Iterator[jsonschema.ValidationError]:
    yield jsonschema.ValidationError(
        f"sets {what}, whose schema was not vendored (tests/deploy/crds/README.md)"
    )


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("int32")  # type: ignore[untyped-decorator]
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")  # type: ignore[untyped-decorator]
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@_FORMATS.checks("byte", raises=binascii.Error)  # type: ignore[untyped-decorator]
def _byte(value: object) -> bool:
    if isinstance(value, str):
        base64.b64decode(value, validate=True)
    return True


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {TRIMMED: _trimmed})


def crd_errors(obj: Obj, version: str) -> list[str]:
    """What keeps `obj`, of a kind `covers` accepts, from the API server of Kubernetes
    `version`: one `path: message` line per problem, none when it is valid."""
    schema = _schema(obj["apiVersion"], obj["kind"])
    registry: Registry[Any] = _definitions(version) @ Registry()
    validator = _Validator(schema, registry=registry, format_checker=_FORMATS)
    errors = sorted(validator.iter_errors(copy.deepcopy(obj)), key=lambda e: list(e.path))
    return [
        f"{'.'.join(str(part) for part in error.path) or '(object)'}: {error.message}"
        for error in errors
    ]
