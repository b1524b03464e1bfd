"""Contracts of the upscaler package."""
