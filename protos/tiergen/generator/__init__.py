"""Contracts of the generator package."""
