"""Entry point of the upscaler service: `python -m services.upscaler`."""

import os

from services.runtime.server import serve_forever
from services.upscaler.server import create_server
from services.upscaler.settings import SERVICE, UpscalerSettings

serve_forever(SERVICE, lambda: create_server(UpscalerSettings.from_env(os.environ)))
