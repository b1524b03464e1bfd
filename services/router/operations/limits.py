"""The operational limits of the router's operations, in one place for the settings to fill."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OperationLimits"]


@dataclass(frozen=True)
class OperationLimits:
    """How batches run, replay and settle, and how leases are kept."""

    #: How long a hold lives if no router settles it: the ledger then returns the credits by
    #: itself. Also how old a batch written without a lease (by a router older than leases)
    #: must be before it counts as abandoned.
    hold_ttl_seconds: int = 900
    #: How long a batch stays its router's without a renewal; renewed every third of it.
    lease_seconds: float = 30.0
    #: How often `Recovery.watch_abandoned` looks for batches whose router is gone.
    claim_interval_seconds: float = 10.0
    #: Jobs of one batch running at once; the generator queues and limits the rest.
    parallel_jobs: int = 4
    #: Longest side of an upscale's output.
    max_upscale_side: int = 8192
    #: How often a replayed call looks for the original call's progress.
    replay_poll_seconds: float = 0.2
    #: Largest in-painting mask accepted in one message.
    max_mask_bytes: int = 4 * 1024 * 1024
    #: Progress of a job reaches the caller at most this often, its latest stage only, and
    #: not at all once the job has finished; 0 sends every progress event as it happens.
    progress_interval_seconds: float = 0.2
