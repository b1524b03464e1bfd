"""Contracts of the router package."""
