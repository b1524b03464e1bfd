"""Downstream: the ledger, generator and upscaler as the router needs them, and their clients."""
