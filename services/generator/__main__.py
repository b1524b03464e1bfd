"""Entry point of the generator service: `python -m services.generator`."""

import os

from services.generator.server import create_server
from services.generator.settings import GeneratorSettings
from services.runtime.server import serve_forever

serve_forever("generator", lambda: create_server(GeneratorSettings.from_env(os.environ)))
