"""The router benchmark's figures: every variant named as before, and authentication's cost as
the share of the auth-off router's throughput that the authenticated one keeps."""

from __future__ import annotations

from bench.router import AUTH_TARGET_RATIO, CONCURRENCY, VARIANTS, _figures, _Sample, _table

#: Requests per second of each variant in the made-up run below.
RPS = {"chain": 500.0, "shape": 200.0, "router": 96.0, "router_untraced": 100.0}


def _samples(auth_off_rps: float) -> dict[tuple[str, int], _Sample]:
    rps = {**RPS, "router_auth_off": auth_off_rps}
    return {
        (name, count): _Sample(
            requests=int(rps[name] * 10),
            seconds=10.0,
            server_cpu_seconds=1.0,
            client_cpu_seconds=0.5,
            latencies_ms=[1000 / rps[name]] * 10,
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
