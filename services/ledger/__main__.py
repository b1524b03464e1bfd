"""Entry point of the ledger service: `python -m services.ledger`."""

import os

from services.ledger.server import create_server
from services.ledger.settings import LedgerSettings
from services.runtime.server import serve_forever

serve_forever("ledger", lambda: create_server(LedgerSettings.from_env(os.environ)))
