"""Tiergen contracts: generated Python bindings, one package per service."""
