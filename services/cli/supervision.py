"""How `tiergen up` keeps its services running: how many of each, and when one that exited is
started again.

A service that exits on its own (a crash, an out-of-memory kill, a `kill -9` to try failover)
is started again after a delay that doubles with each exit in a row, from half a second up to
thirty, so that one that cannot start does not spin the machine, while one that crashed once
is back within a second. A process that stayed up a while counts as healthy again: its next
exit waits the first delay again, as a Kubernetes pod's CrashLoopBackOff resets after ten
minutes of running.

Replicas are what `--replicas router=2,ledger=2` asks for: more than one process of a service,
each on its own port, which the callers' channels balance round robin
(`services.runtime.channels.dial_target`).
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["MAX_REPLICAS", "RestartPolicy", "check_replicas", "describe_exit", "parse_replicas"]

#: Replicas of one service at most: replica i listens on the port of the first plus 10 * i.
MAX_REPLICAS = 9


@dataclass(frozen=True)
class RestartPolicy:
    """The delays before a service that exited is started again."""

    #: The delay after the first exit in a row.
    initial_seconds: float = 0.5
    #: Each further exit in a row waits this many times longer ...
    multiplier: float = 2.0
    #: ... up to this.
    max_seconds: float = 30.0
    #: A process that ran at least this long before exiting starts the count again.
    stable_seconds: float = 60.0

    def delay(self, attempt: int) -> float:
        """The delay before restart number `attempt` (1 for the first) of an exit streak."""
        return min(self.initial_seconds * self.multiplier ** max(attempt - 1, 0), self.max_seconds)

    def attempt(self, previous_attempt: int, ran_seconds: float) -> int:
        """The attempt number of the restart after a process that ran `ran_seconds` exited,
        the restart before it having been number `previous_attempt` (0: none yet)."""
        return 1 if ran_seconds >= self.stable_seconds else previous_attempt + 1


def describe_exit(returncode: int) -> dict[str, int | str]:
    """A process's exit as log fields: its exit code, or the signal that ended it."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return {"signal": name}
    return {"exit_code": returncode}


def parse_replicas(text: str, services: Iterable[str]) -> dict[str, int]:
    """`router=2,ledger=2` as a count per service; ValueError saying what is wrong with it."""
    known = tuple(services)
    counts: dict[str, int] = {}
    for part in text.split(","):
        name, separator, count = (piece.strip() for piece in part.partition("="))
        if not separator or not name:
            raise ValueError(f"--replicas takes SERVICE=COUNT entries, not {part.strip()!r}")
        if name not in known:
            raise ValueError(f"--replicas: unknown service {name!r}; expected {', '.join(known)}")
        if name in counts:
            raise ValueError(f"--replicas: {name} is given twice")
        if not count.isdigit() or not 1 <= int(count) <= MAX_REPLICAS:
            raise ValueError(
                f"--replicas {name}={count}: expected a whole number from 1 to {MAX_REPLICAS}"
            )
        counts[name] = int(count)
    return counts


def check_replicas(replicas: Mapping[str, int], dsns: Mapping[str, str]) -> None:
    """ValueError when a database-backed service has replicas over a database that cannot be
    shared: `dsns` names each such service's database."""
    for name, dsn in dsns.items():
        if replicas.get(name, 1) > 1 and not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                f"--replicas {name}={replicas[name]} needs a PostgreSQL database (--postgres"
                f" DSN): the {name}'s replicas share one, and a SQLite file cannot be shared"
            )
