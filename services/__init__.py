"""Tiergen services: router, generator, ledger, upscaler and the runtime they share."""
