"""Contracts of the ledger package."""
