"""The result of `tiergen ledger verify`, pushed to a Prometheus Pushgateway.

A verification run is a batch job: it is gone before Prometheus could scrape it, so it pushes
its result to a Pushgateway, which Prometheus scrapes, under `job="tiergen-ledger-verify"`:

- `tiergen_ledger_verify_last_run_timestamp_seconds`: when the last run ended, whatever came of it;
- `tiergen_ledger_verify_last_success_timestamp_seconds`: when a run last found every
  invariant holding;
- `tiergen_ledger_verify_violations`: the invariants the last run that could read the ledger
  found violated.

A run that passes replaces the job's whole group (HTTP PUT). One that does not only adds to it
(HTTP POST, which replaces the metrics it names and keeps the others), so the last success
keeps its old time and "no success for too long" can alert; a run that could not read the
ledger pushes its run time alone. The push never changes the command's exit status: a
Pushgateway that is down is one line on stderr, and the success timestamp growing old is what
then alerts.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, pushadd_to_gateway

__all__ = ["JOB", "PUSHGATEWAY_VARIABLE", "PushError", "push_verify_result"]

#: The Pushgateway job the result is grouped under (the alerts select it).
JOB = "tiergen-ledger-verify"
#: Where the Pushgateway is when `--pushgateway` is not given.
PUSHGATEWAY_VARIABLE = "TIERGEN_PUSHGATEWAY_URL"
#: Seconds the push may take; a verification is not held up longer by a Pushgateway.
_TIMEOUT_SECONDS = 10.0


class PushError(Exception):
    """The Pushgateway could not be reached or refused the push; the message names it."""


def push_verify_result(
    url: str,
    violations: int | None,
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Push one run's result to the Pushgateway at `url`.

    `violations` is how many invariants failed, or None when the ledger could not be read.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise PushError(f"the Pushgateway URL must be http(s)://HOST[:PORT], not {_shown(url)}")
    if parsed.username is not None or parsed.password is not None:
        raise PushError(f"the Pushgateway URL must not carry credentials: {_shown(url)}")
    registry = CollectorRegistry()
    now = clock()
    Gauge(
        "tiergen_ledger_verify_last_run_timestamp_seconds",
        "When the last `tiergen ledger verify` run ended, whatever its result.",
        registry=registry,
    ).set(now)
    if violations is not None:
        Gauge(
            "tiergen_ledger_verify_violations",
            "Ledger invariants the last verification that could read the ledger found violated.",
            registry=registry,
        ).set(violations)
    if violations == 0:
        Gauge(
            "tiergen_ledger_verify_last_success_timestamp_seconds",
            "When a `tiergen ledger verify` run last found every invariant holding.",
            registry=registry,
        ).set(now)
    push = push_to_gateway if violations == 0 else pushadd_to_gateway
    try:
        push(url, job=JOB, registry=registry, timeout=_TIMEOUT_SECONDS)
    except OSError as error:  # urllib's URLError and HTTPError are OSErrors
        reason = getattr(error, "reason", None) or error
        raise PushError(f"could not push to the Pushgateway at {_shown(url)}: {reason}") from None


def _shown(url: str) -> str:
    """`url` fit for a message: without any user information it may carry."""
    parsed = urllib.parse.urlsplit(url)
    if "@" not in parsed.netloc:
        return url
    host = parsed.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parsed._replace(netloc=f"***@{host}"))
