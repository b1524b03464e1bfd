"""Quotas per tenant and per account: requests per second, images per minute and concurrent
jobs, from TIERGEN_ROUTER_QUOTAS_FILE (`table`), judged by GCRA (`rates`) on state shared in the
router's database (`store`), applied to each call that creates work (`limiter`)."""

from services.router.quotas.limiter import QuotaLimiter, QuotaPass, reload_on_change
from services.router.quotas.store import SqlQuotaStore
from services.router.quotas.table import NO_QUOTAS, QUOTAS_FILE_SETTING, QuotaTable, load_quotas

__all__ = [
    "NO_QUOTAS",
    "QUOTAS_FILE_SETTING",
    "QuotaLimiter",
    "QuotaPass",
    "QuotaTable",
    "SqlQuotaStore",
    "load_quotas",
    "reload_on_change",
]
