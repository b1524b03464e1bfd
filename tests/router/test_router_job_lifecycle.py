"""The job lifecycle as a rule of its own: every move it allows, and that nothing else moves."""

from __future__ import annotations

import itertools

from services.router.jobs.model import LIFECYCLE, JobStatus, may_move

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)
ALLOWED = {
    (QUEUED, RUNNING),
    (RUNNING, SUCCEEDED),
    (QUEUED, FAILED),
    (RUNNING, FAILED),
    (QUEUED, CANCELLED),
    (RUNNING, CANCELLED),
}


def test_exactly_the_documented_moves_are_allowed() -> None:
    moves = {
        (status, target)
        for status, target in itertools.product(JobStatus, repeat=2)
        if may_move(status, target)
    }
    assert moves == ALLOWED


def test_a_final_job_never_moves_and_nothing_returns_to_the_queue() -> None:
    for status, target in itertools.product(JobStatus, repeat=2):
        if status.is_final or target is QUEUED:
            assert not may_move(status, target)
    assert QUEUED not in LIFECYCLE
