"""The webhook rules free of I/O: Standard Webhooks signatures, which URLs and addresses may be
called (SSRF), the retry schedule and when an endpoint is paused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac

import httpcore
import httpx
import pytest

from services.router.webhooks.schedule import RetryPolicy
from services.router.webhooks.signing import Signer, check_secret, new_secret, signature_headers
from services.router.webhooks.targets import (
    DeliveryTransport,
    GuardedBackend,
    address_refusal,
    check_target,
    check_url,
    client_ssl_context,
)
from services.runtime.errors import InvalidArgument


class TestSigning:
    def test_the_specifications_example(self) -> None:
        # The example of the Standard Webhooks specification and its reference libraries.
        signer = Signer("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        signature = signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
        assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    def test_a_new_secret_verifies_as_the_specification_says(self) -> None:
        secret = new_secret()
        assert secret.startswith("whsec_") and len(check_secret(secret)) == 32
        headers = signature_headers(Signer(secret), "msg_1", 1700000000, b'{"a":1}')
        key = base64.b64decode(secret.removeprefix("whsec_"))
        expected = hmac.new(key, b'msg_1.1700000000.{"a":1}', hashlib.sha256).digest()
        assert headers == {
            "webhook-id": "msg_1",
            "webhook-timestamp": "1700000000",
            "webhook-signature": "v1," + base64.b64encode(expected).decode(),
        }

    def test_secrets_stay_out_of_reprs_and_errors(self) -> None:
        secret = new_secret()
        assert secret.removeprefix("whsec_") not in repr(Signer(secret))
        for bad in ("nope", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()):
            with pytest.raises(ValueError) as caught:
                check_secret(bad)
            assert bad not in str(caught.value)


class TestAddresses:
    @pytest.mark.parametrize(
        "address",
        [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.10.10",
            "fe80::1",
            "fd12:3456::1",
            "100.64.0.1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2002:7f00:1::",
        ],
    )
    def test_private_and_special_addresses_are_refused(self, address: str) -> None:
        assert address_refusal(address, allow_private=False) is not None

    @pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
    def test_public_addresses_are_allowed(self, address: str) -> None:
        assert address_refusal(address, allow_private=False) is None

    @pytest.mark.parametrize(
        "address", ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254"]
    )
    def test_metadata_addresses_are_refused_even_when_private_targets_are_allowed(
        self, address: str
    ) -> None:
        assert address_refusal(address, allow_private=True) == "a cloud metadata address"

    def test_allowing_private_targets_opens_loopback_and_private(self) -> None:
        for address in ("127.0.0.1", "10.0.0.1", "::1", "169.254.1.1"):
            assert address_refusal(address, allow_private=True) is None


class TestUrls:
    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("http://hooks.example.com/x", "WEBHOOK_URL_INVALID"),
            ("ftp://hooks.example.com/x", "WEBHOOK_URL_INVALID"),
            ("https://user:pw@hooks.example.com/x", "WEBHOOK_URL_INVALID"),
            ("https:///x", "WEBHOOK_URL_INVALID"),
            ("https://hooks.example.com/x#frag", "WEBHOOK_URL_INVALID"),
            ("https://hooks.example.com:99999/x", "WEBHOOK_URL_INVALID"),
            ("https://hooks.example.com/a b", "WEBHOOK_URL_INVALID"),
            ("https://" + "a" * 2000 + ".com/", "WEBHOOK_URL_INVALID"),
            ("https://127.0.0.1/hook", "WEBHOOK_TARGET_REFUSED"),
            ("https://[::1]/hook", "WEBHOOK_TARGET_REFUSED"),
            ("https://169.254.169.254/latest/meta-data", "WEBHOOK_TARGET_REFUSED"),
        ],
    )
    def test_bad_urls_are_refused(self, url: str, reason: str) -> None:
        with pytest.raises(InvalidArgument) as caught:
            check_url(url, allow_private=False)
        assert caught.value.reason == reason
        assert caught.value.violations[0].field == "url"

    def test_plain_http_only_where_private_targets_are_allowed(self) -> None:
        check_url("http://127.0.0.1:8080/hook", allow_private=True)

    async def test_a_name_resolving_to_a_private_address_is_refused_when_saved(self) -> None:
        async def rebinding(host: str, port: int) -> list[str]:
            return ["93.184.216.34", "10.0.0.7"]

        with pytest.raises(InvalidArgument) as caught:
            await check_target(
                "https://hooks.example.com/x", allow_private=False, resolve=rebinding
            )
        assert caught.value.reason == "WEBHOOK_TARGET_REFUSED"
        assert "10.0.0.7" not in caught.value.message

    async def test_localhost_is_refused_by_what_it_resolves_to(self) -> None:
        with pytest.raises(InvalidArgument) as caught:
            await check_target("https://localhost:9/x", allow_private=False)
        assert caught.value.reason == "WEBHOOK_TARGET_REFUSED"

    async def test_a_name_that_does_not_resolve_is_refused(self) -> None:
        async def nothing(host: str, port: int) -> list[str]:
            raise OSError("no such host")

        with pytest.raises(InvalidArgument) as caught:
            await check_target("https://nowhere.invalid/x", allow_private=False, resolve=nothing)
        assert caught.value.reason == "WEBHOOK_URL_UNRESOLVABLE"


class TestConnections:
    async def test_the_address_is_checked_again_when_connecting(self) -> None:
        """A name that resolved to a public address when saved and to a private one now (DNS
        rebinding) is refused at the connection, before any byte is sent."""
        connected: list[str] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connected.append("yes")
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def rebound(host: str, port: int) -> list[str]:
            return ["127.0.0.1"]

        transport = DeliveryTransport(
            client_ssl_context(None), allow_private=False, resolve=rebound
        )
        try:
            request = httpx.Request("POST", f"https://hooks.example.com:{port}/x", content=b"{}")
            with pytest.raises(httpx.ConnectError) as caught:
                await transport.handle_async_request(request)
            assert str(caught.value) == "refused: its host resolves to a loopback address"
        finally:
            await transport.aclose()
            server.close()
        assert connected == []

    async def test_unix_sockets_are_refused(self) -> None:
        with pytest.raises(httpcore.ConnectError):
            await GuardedBackend(allow_private=True).connect_unix_socket("/run/docker.sock")


class TestSchedule:
    def test_backoff_doubles_with_jitter_up_to_its_cap(self) -> None:
        policy = RetryPolicy(base_seconds=5, max_delay_seconds=3600)
        assert policy.delay_seconds(1, rand=lambda: 1.0) == 5
        assert policy.delay_seconds(1, rand=lambda: 0.0) == 2.5
        assert policy.delay_seconds(4, rand=lambda: 1.0) == 40
        assert policy.delay_seconds(30, rand=lambda: 1.0) == 3600
        assert policy.delay_seconds(10_000, rand=lambda: 0.5) == 2700

    def test_no_attempt_after_the_retry_period(self) -> None:
        policy = RetryPolicy(base_seconds=5, max_delay_seconds=3600, period_seconds=86_400)
        start, now, attempts = 0, 0, 0
        while True:
            attempts += 1
            due = policy.next_attempt_us(start, now, attempts, rand=lambda: 1.0)
            if due is None:
                break
            now = due
        assert now <= 86_400 * 1_000_000 and 25 <= attempts <= 40

    def test_pausing_takes_enough_failures_over_enough_time(self) -> None:
        policy = RetryPolicy(pause_after_failures=20, pause_after_seconds=3600)
        hour = 3600 * 1_000_000
        assert policy.pause_reason(19, 0, 2 * hour, "HTTP 500") is None
        assert policy.pause_reason(20, 0, hour // 2, "HTTP 500") is None
        reason = policy.pause_reason(20, 0, hour, "HTTP 500")
        assert reason == (
            "20 attempts in a row failed since 1970-01-01T00:00:00Z; the last: HTTP 500"
        )
