"""Contracts of the common package."""
