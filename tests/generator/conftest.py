"""Fixtures of the provider tests: a fake Gemini and OpenAI API per module, reset per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.generator.fake_providers import FakeGemini, FakeOpenAI


@pytest.fixture(scope="module")
def gemini_server() -> Iterator[FakeGemini]:
    with FakeGemini(api_key="gemini-test-key-4f1c") as fake:
        yield fake


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="sk-openai-test-key-9d2e") as fake:
        yield fake


@pytest.fixture
def fake_gemini(gemini_server: FakeGemini) -> Iterator[FakeGemini]:
    """The module's fake Gemini API, answering normally and with no request seen."""
    gemini_server.reset()
    yield gemini_server
    gemini_server.reset()


@pytest.fixture
def fake_openai(openai_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The module's fake OpenAI API, answering normally and with no request seen."""
    openai_server.reset()
    yield openai_server
    openai_server.reset()
