"""Fixtures shared by every test: an in-memory span exporter, a restored environment, the run's
certificates, and the Hypothesis profiles (derandomised under CI, so a property test's verdict
is not luck)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.tls import TestPki, session_pki

# Under CI every run draws the same examples and remembers none: its verdict depends on the
# code alone. Elsewhere the failures found are replayed first, from a directory outside the
# repository, so no run depends on what an earlier one left in the tree.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile(
    "dev",
    database=DirectoryBasedExampleDatabase(Path(tempfile.gettempdir()) / "tiergen-hypothesis"),
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider(resource=Resource.create({"service.name": "tiergen-tests"}))
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))
trace.set_tracer_provider(_PROVIDER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans finished during the test, in-process (servers started by the test included)."""
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture(scope="session", autouse=True)
def pki() -> TestPki:
    """The run's CA and certificates (`tests.tls`): every server a test starts serves TLS.

    Made before any test saves the environment, so that the variable naming their directory
    stays there for every process a test starts.
    """
    return session_pki()


@pytest.fixture(autouse=True)
def _restore_environ() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
