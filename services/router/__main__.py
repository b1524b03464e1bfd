"""Entry point of the router service: `python -m services.router`."""

import os

from services.router.server import create_server
from services.router.settings import RouterSettings
from services.runtime.server import serve_forever

serve_forever("router", lambda: create_server(RouterSettings.from_env(os.environ)))
