"""Entry point of the router service: `python -m services.router`."""

import os

from services.router.server import create_server
from services.router.settings import RouterSettings
from services.runtime.server import Server, serve_forever
from services.runtime.startup import database, dsn_setting


async def _start() -> tuple[Server, int]:
    settings = RouterSettings.from_env(os.environ)
    # The job store and the API keys share the database: out of reach, it ends the start with
    # its setting and host named. The ledger, generator and upscaler are called later, and
    # readiness reports them.
    with database(dsn_setting(os.environ, "TIERGEN_ROUTER_DSN"), settings.jobs_dsn):
        return await create_server(settings)


serve_forever("router", _start)
