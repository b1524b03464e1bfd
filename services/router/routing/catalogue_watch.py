"""Keeps the router's tier catalogue the generator's: read from `ListTiers` at start and every
interval, a changed answer swapped in and logged, the router ready only once it has one.

Polling, not a stream: ListTiers is a cheap unary call every generator already serves, and a
catalogue changes when an operator redeploys the generator, not from one second to the next.
Until the generator first answers the router cannot route anything, so it asks again at least
every `CATALOGUE_RETRY_SECONDS` and keeps its readiness NOT_SERVING; once it has a catalogue, a
generator that stops answering leaves the last one in place (the breaker and the generator's own
errors cover the outage) and readiness alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import structlog

from services.router.routing.catalogue import CATALOGUE_RETRY_SECONDS, TierCatalogue
from services.router.routing.routable import Note
from services.runtime.errors import TiergenError

__all__ = ["CatalogueWatcher", "TierSource", "log_notes"]

_log = structlog.get_logger("tiergen.router")


class TierSource(Protocol):
    """Where the tiers come from: the generator's `ListTiers`."""

    async def tiers(self) -> TierCatalogue: ...


def log_notes(notes: Iterable[Note]) -> None:
    """Logs what reconciling the generator's tiers with the router's files left out: an error
    line for what the generator offers but the router will not route, a warning for the rest."""
    for note in notes:
        if note.level == "error":
            _log.error("tier not routed", problem=note.message)
        else:
            _log.warning("router configuration ignored", problem=note.message)


class CatalogueWatcher:
    """Reads the generator's catalogue, hands each changed one to `adopt`, and tells `ready`
    whether the router can serve (only once a catalogue is known)."""

    def __init__(
        self,
        source: TierSource,
        adopt: Callable[[TierCatalogue], None],
        *,
        ready: Callable[[bool], Awaitable[None]],
        interval: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._source = source
        self._adopt = adopt
        self._ready = ready
        self._interval = interval
        self._sleep = sleep
        self._catalogue: TierCatalogue | None = None
        self._serving: bool | None = None
        self._answering = True

    @property
    def catalogue(self) -> TierCatalogue | None:
        """The catalogue last adopted; None until the generator first answers."""
        return self._catalogue

    async def refresh(self) -> None:
        """Asks the generator once; adopts its answer if it changed. Never raises: a generator
        that does not answer is logged (once per outage) and asked again later."""
        try:
            catalogue = await self._source.tiers()
        except TiergenError as error:
            if self._answering:
                _log.warning(
                    "could not read the generator's tiers",
                    error=error.message,
                    reason=error.reason,
                    catalogue_known=self._catalogue is not None,
                )
            self._answering = False
            await self._set_ready(self._catalogue is not None)
            return
        if not self._answering:
            _log.info("the generator's tiers are readable again")
        self._answering = True
        if catalogue != self._catalogue:
            changes = catalogue.changes_from(self._catalogue)
            if self._catalogue is None:
                _log.info("tier catalogue learned from the generator", changes=changes)
            else:
                _log.warning("tier catalogue changed at the generator", changes=changes)
            self._catalogue = catalogue
            self._adopt(catalogue)
        await self._set_ready(True)

    async def watch(self) -> None:
        """Refreshes every interval (at least every `CATALOGUE_RETRY_SECONDS` while no catalogue
        is known) until cancelled; start it with `server.add_background`."""
        while True:
            wait = self._interval
            if self._catalogue is None:
                wait = min(wait, CATALOGUE_RETRY_SECONDS)
            await self._sleep(wait)
            await self.refresh()

    async def _set_ready(self, serving: bool) -> None:
        if serving != self._serving:
            self._serving = serving
            await self._ready(serving)
