"""Fair share of a service's workers between tenants, and interactive work before bulk.

`order` decides which waiting job starts next (pure); `dispatcher` hands workers out in that
order on an event loop, admits jobs by deadline and sheds bulk work first; `estimates` learns
how long each kind of job takes; `settings` reads the weights and the bound.
"""

from services.runtime.fairshare.dispatcher import Dispatcher, GroupFull, GroupLimits, Ticket, Turn
from services.runtime.fairshare.estimates import ServiceTimes
from services.runtime.fairshare.order import Claim, FairOrder, Lane, Requester, Urgency
from services.runtime.fairshare.settings import (
    DEFAULT_INTERACTIVE_BURST,
    FairShareSettings,
    TenantWeights,
    parse_weights,
)

__all__ = [
    "DEFAULT_INTERACTIVE_BURST",
    "Claim",
    "Dispatcher",
    "FairOrder",
    "FairShareSettings",
    "GroupFull",
    "GroupLimits",
    "Lane",
    "Requester",
    "ServiceTimes",
    "TenantWeights",
    "Ticket",
    "Turn",
    "Urgency",
    "parse_weights",
]
