"""The tracing switch: TIERGEN_TRACING=off installs nothing; other values are refused."""

from __future__ import annotations

import pytest

from services.runtime.settings import ConfigError
from services.runtime.tracing import configure_tracing


@pytest.mark.parametrize("value", ["off", "false", "0", "no", " OFF "])
def test_tracing_off_installs_no_provider(value):
    assert configure_tracing("probe", {"TIERGEN_TRACING": value}) is None


def test_tracing_off_reads_no_exporter_setting():
    environ = {"TIERGEN_TRACING": "off", "OTEL_TRACES_EXPORTER": "jaeger"}

    assert configure_tracing("probe", environ) is None


@pytest.mark.parametrize("value", ["sometimes", "2", "disabled"])
def test_tracing_switch_refuses_other_values(value):
    with pytest.raises(ConfigError, match="TIERGEN_TRACING"):
        configure_tracing("probe", {"TIERGEN_TRACING": value})


def test_tracing_on_still_refuses_an_unknown_exporter():
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        configure_tracing("probe", {"TIERGEN_TRACING": "on", "OTEL_TRACES_EXPORTER": "jaeger"})
