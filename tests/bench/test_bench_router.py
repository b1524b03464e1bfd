"""The router benchmark's figures: every variant named as before, authentication's cost as the
share of the auth-off router's throughput that the authenticated one keeps, and TLS's as the share
of the plaintext router's that the one with mutual TLS on every hop keeps."""

from __future__ import annotations

from bench.router import (
    AUTH_TARGET_RATIO,
    CONCURRENCY,
    MTLS_TARGET_RATIO,
    VARIANTS,
    _figures,
    _Sample,
    _table,
)

#: Requests per second of each variant in the made-up run below (100 for any other).
RPS = {"chain": 500.0, "shape": 200.0, "router": 96.0, "router_untraced": 100.0}


def _samples(auth_off_rps: float, plaintext_rps: float = 100.0) -> dict[tuple[str, int], _Sample]:
    rps = {**RPS, "router_auth_off": auth_off_rps, "router_plaintext": plaintext_rps}
    return {
        (name, count): _Sample(
            requests=int(rps.get(name, 100.0) * 10),
            seconds=10.0,
            server_cpu_seconds=1.0,
            client_cpu_seconds=0.5,
            latencies_ms=[1000 / rps.get(name, 100.0)] * 10,
        )
        for name in VARIANTS
        for count in CONCURRENCY
    }


def test_the_auth_off_router_is_the_baseline_of_the_auth_target():
    kept = _figures(_samples(auth_off_rps=100.0), rounds=1, seconds=10.0, requests=10_000)
    lost = _figures(_samples(auth_off_rps=110.0), rounds=1, seconds=10.0, requests=10_000)

    assert (kept["router_rps_16"], kept["router_rps_16_auth_off"]) == (96.0, 100.0)
    assert kept["router_rps_16_untraced"] == 100.0  # the names from before stay
    assert kept["auth_rps_ratio_16"] == 0.96
    assert lost["auth_rps_ratio_16"] == round(96 / 110, 3)
    target = f"router_rps_16_at_least_{AUTH_TARGET_RATIO:g}_of_auth_off"
    assert kept["targets"][target] is True
    assert lost["targets"][target] is False
    assert "auth on/off req/s at 16: 0.96" in _table(kept)
    assert "router_auth_off" in _table(kept)


def test_the_plaintext_router_is_the_baseline_of_the_mtls_target():
    kept = _figures(_samples(100.0, plaintext_rps=110.0), rounds=1, seconds=10.0, requests=10_000)
    lost = _figures(_samples(100.0, plaintext_rps=120.0), rounds=1, seconds=10.0, requests=10_000)

    assert kept["router_rps_16_plaintext"] == 110.0
    assert kept["mtls_rps_ratio_16"] == round(96 / 110, 3)
    target = f"router_rps_16_at_least_{MTLS_TARGET_RATIO:g}_of_plaintext"
    assert kept["targets"][target] is True
    assert lost["targets"][target] is False
    assert f"mTLS/plaintext req/s at 16: {kept['mtls_rps_ratio_16']}" in _table(kept)
    assert "router_plaintext" in _table(kept)
