"""Fair-share configuration of a service's queues: tenant weights and the interactive bound.

Both the generator and the upscaler read the same settings under their own prefix
(`TIERGEN_GENERATOR_…`, `TIERGEN_UPSCALER_…`), so an operator configures fairness the same way
for each, and a malformed value stops the service at start with one line naming the variable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.runtime.settings import ConfigError, Env

__all__ = [
    "DEFAULT_INTERACTIVE_BURST",
    "FairShareSettings",
    "TenantWeights",
    "parse_weights",
]

#: Interactive starts on shared workers in a row while bulk work waits, before one bulk start.
DEFAULT_INTERACTIVE_BURST = 8
_MOST_BURST = 1000
#: Tenant names as the router's credentials spell them, and `*` for every tenant not listed.
_TENANT = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,63})$")
_MOST_WEIGHT = 1000.0


@dataclass(frozen=True)
class TenantWeights:
    """Each tenant's share of the workers relative to the others': 2 gets twice 1's.

    Tenants not listed get `default` (1 unless `*=W` says otherwise).
    """

    weights: Mapping[str, float] = field(default_factory=dict)
    default: float = 1.0

    def of(self, tenant: str) -> float:
        return self.weights.get(tenant, self.default)


def parse_weights(text: str) -> TenantWeights:
    """`acme=2,globex=1,*=1` as weights; ValueError saying what is wrong otherwise."""
    weights: dict[str, float] = {}
    default = 1.0
    for part in text.split(","):
        entry = part.strip()
        if not entry:
            continue
        tenant, separator, raw = (piece.strip() for piece in entry.partition("="))
        if not separator or not tenant:
            raise ValueError(f"{entry!r} is not tenant=weight (for example acme=2,globex=1)")
        if not _TENANT.match(tenant):
            raise ValueError(f"{tenant!r} is not a tenant name (letters, digits, . _ -) nor *")
        try:
            weight = float(raw)
        except ValueError:
            raise ValueError(f"{tenant}={raw!r}: the weight must be a number") from None
        if not math.isfinite(weight) or not 0 < weight <= _MOST_WEIGHT:
            raise ValueError(f"{tenant}={raw}: the weight must be above 0 and at most 1000")
        if tenant == "*":
            default = weight
        elif tenant in weights:
            raise ValueError(f"tenant {tenant!r} is listed twice")
        else:
            weights[tenant] = weight
    return TenantWeights(weights, default)


@dataclass(frozen=True)
class FairShareSettings:
    """How one service shares its workers between tenants and between interactive and bulk."""

    weights: TenantWeights = field(default_factory=TenantWeights)
    #: At most this many interactive jobs start on shared workers in a row while bulk work
    #: waits; then one bulk job starts. The bound that keeps bulk work from starving.
    interactive_burst: int = DEFAULT_INTERACTIVE_BURST

    def __post_init__(self) -> None:
        if not 1 <= self.interactive_burst <= _MOST_BURST:
            raise ConfigError(f"interactive_burst={self.interactive_burst}: must be 1 to 1000")

    @classmethod
    def from_env(cls, prefix: str, environ: Mapping[str, str]) -> FairShareSettings:
        """Reads `{prefix}_TENANT_WEIGHTS` and `{prefix}_INTERACTIVE_BURST`; ConfigError naming
        the variable when either is malformed."""
        env = Env(environ)
        weights_variable = f"{prefix}_TENANT_WEIGHTS"
        raw = env.optional_str(weights_variable)
        try:
            weights = TenantWeights() if raw is None else parse_weights(raw)
        except ValueError as error:
            raise ConfigError(f"{weights_variable}: {error}") from None
        burst = env.integer(
            f"{prefix}_INTERACTIVE_BURST",
            DEFAULT_INTERACTIVE_BURST,
            minimum=1,
            maximum=_MOST_BURST,
        )
        return cls(weights=weights, interactive_burst=burst)
