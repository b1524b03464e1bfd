"""The rate-limit benchmark's figures: calls counted by when they were answered, refusals and
timeouts apart, and the target as accepted calls per second within 5% of the limit."""

from __future__ import annotations

from bench.ratelimit import _Answer, _figures, _tally


def test_calls_are_counted_by_when_they_were_answered() -> None:
    answers = [
        _Answer(0, sent_at=0.5, answered_at=0.9, outcome="accepted"),  # before the window
        _Answer(0, sent_at=0.9, answered_at=1.1, outcome="accepted"),
        _Answer(1, sent_at=1.0, answered_at=1.2, outcome="refused"),
        _Answer(1, sent_at=1.5, answered_at=1.6, outcome="QUEUE_FULL"),
        _Answer(0, sent_at=1.7, answered_at=2.5, outcome="DEADLINE_EXCEEDED"),
        _Answer(1, sent_at=2.9, answered_at=3.1, outcome="accepted"),  # after it
    ]
    tally = _tally(answers, 1.0, 3.0)
    assert (tally.sent, tally.accepted, tally.refused, tally.unknown) == (4, 2, 1, 1)
    assert tally.accepted_by_replica == [1, 1]
    assert dict(tally.errors) == {"QUEUE_FULL": 1}


def test_the_target_is_the_limit_within_five_percent() -> None:
    answers = [_Answer(i % 2, i / 20, i / 20, "accepted") for i in range(41)]
    met = _figures(_tally(answers, 0.0, 2.0), limit=20, seconds=2.0, warmup=0.0)
    assert met["ratelimit_accepted_per_s"] == 20.0
    assert met["ratelimit_accepted_ratio"] == 1.0
    assert met["targets"] == {"ratelimit_accepted_within_5%_of_limit": True}
    doubled = _figures(_tally(answers, 0.0, 2.0), limit=10, seconds=2.0, warmup=0.0)
    assert doubled["targets"] == {"ratelimit_accepted_within_5%_of_limit": False}
