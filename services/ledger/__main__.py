"""Entry point of the ledger service: `python -m services.ledger`."""

import os

from services.ledger.server import create_server
from services.ledger.settings import LedgerSettings
from services.runtime.server import Server, serve_forever
from services.runtime.startup import database, dsn_setting


async def _start() -> tuple[Server, int]:
    settings = LedgerSettings.from_env(os.environ)
    # A database out of reach ends the start with its setting and host named.
    with database(dsn_setting(os.environ, "TIERGEN_LEDGER_DSN"), settings.dsn):
        return await create_server(settings)


serve_forever("ledger", _start)
