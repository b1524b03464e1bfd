"""What a set of Kubernetes NetworkPolicies allows, worked out offline from the objects alone,
so a test can state who may reach what instead of how the policies spell it.

The semantics are those of `networking.k8s.io/v1`: a pod is isolated in a direction once a
policy of its namespace selects it for that direction, and then takes only what some rule of
those policies allows; policies add up. A peer with only a `podSelector` is in the policy's own
namespace; a `namespaceSelector` picks namespaces by their labels (every namespace carries
`kubernetes.io/metadata.name`); an `ipBlock` here matches addresses outside the cluster only
(which pod addresses it covers is left to the network plugin). Ports match by number or by the
destination's container port name, with `endPort` ranges; the protocol defaults to TCP.
Traffic from the pod's own node (the kubelet's probes) is always allowed and not modelled.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Endpoint", "allows", "governing", "selects"]

Obj = dict[str, Any]


@dataclass(frozen=True, eq=False)
class Endpoint:
    """One end of a connection: a pod (its namespace, the namespace's labels, its own labels and
    named container ports) or, with `address`, something outside the cluster."""

    name: str
    namespace: str | None = None
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] | None = None
    ports: Mapping[str, int] = field(default_factory=dict)
    address: str | None = None

    @classmethod
    def pod(
        cls,
        name: str,
        namespace: str,
        labels: Mapping[str, str],
        *,
        namespace_labels: Mapping[str, str] | None = None,
        ports: Mapping[str, int] | None = None,
    ) -> Endpoint:
        return cls(
            name,
            namespace,
            {"kubernetes.io/metadata.name": namespace, **(namespace_labels or {})},
            labels,
            ports or {},
        )

    @classmethod
    def outside(cls, name: str, address: str) -> Endpoint:
        return cls(name, address=address)

    @property
    def is_pod(self) -> bool:
        return self.labels is not None


def selects(selector: Obj, labels: Mapping[str, str]) -> bool:
    """A LabelSelector against labels: `{}` selects everything."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _policy_types(policy: Obj) -> set[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return set(spec["policyTypes"])
    return {"Ingress", *(["Egress"] if "egress" in spec else [])}


def governing(policies: Iterable[Obj], pod: Endpoint, direction: str) -> list[Obj]:
    """The policies that isolate `pod` in `direction` ("Ingress" or "Egress")."""
    if not pod.is_pod:
        return []
    assert pod.labels is not None
    return [
        policy
        for policy in policies
        if policy["metadata"].get("namespace") == pod.namespace
        and selects(policy["spec"]["podSelector"], pod.labels)
        and direction in _policy_types(policy)
    ]


def _peer_matches(peer: Obj, namespace: str | None, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if other.address is None:
            return False
        address = ipaddress.ip_address(other.address)
        block = peer["ipBlock"]
        if address not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(address in ipaddress.ip_network(c) for c in block.get("except", []))
    if not other.is_pod:
        return False
    assert other.labels is not None
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def _port_matches(
    ports: Sequence[Obj] | None, port: int, protocol: str, named: Mapping[str, int]
) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        given: int | str = entry["port"]
        first = named.get(given) if isinstance(given, str) else given
        if first is not None and first <= port <= entry.get("endPort", first):
            return True
    return False


def _direction_allows(
    policies: Sequence[Obj],
    direction: str,
    subject: Endpoint,
    other: Endpoint,
    port: int,
    protocol: str,
    named: Mapping[str, int],
) -> bool:
    isolating = governing(policies, subject, direction)
    if not isolating:
        return True
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in isolating:
        namespace = policy["metadata"].get("namespace")
        for rule in policy["spec"].get(rules_key, []):
            peers = rule.get(peers_key)
            if peers and not any(_peer_matches(peer, namespace, other) for peer in peers):
                continue
            if _port_matches(rule.get("ports"), port, protocol, named):
                return True
    return False


def allows(
    policies: Sequence[Obj],
    source: Endpoint,
    destination: Endpoint,
    port: int,
    protocol: str = "TCP",
    *,
    direction: str | None = None,
) -> bool:
    """Whether `source` may open a connection to `destination` on `port`: the source's egress
    and the destination's ingress both allow it (or only the one `direction` names)."""
    named = destination.ports
    egress = direction in {None, "Egress"}
    ingress = direction in {None, "Ingress"}
    return (
        not egress
        or _direction_allows(policies, "Egress", source, destination, port, protocol, named)
    ) and (
        not ingress
        or _direction_allows(policies, "Ingress", destination, source, port, protocol, named)
    )
