"""The SSRF guard: policy table, and the real daemon refusing blocked webhook targets."""

from __future__ import annotations

import pytest

from eventstreamd.config import Config
from eventstreamd.sinks.ssrf import is_blocked
from tests.helpers.api import BASE, ApiClient, events
from tests.helpers.daemon import DaemonProcess, Factory
from tests.helpers.receiver import Receiver


@pytest.mark.parametrize(("address", "none", "link_local", "private"), [
    ("169.254.169.254", False, True, True),
    ("fe80::1", False, True, True),
    ("127.0.0.1", False, False, True),
    ("::1", False, False, True),
    ("10.1.2.3", False, False, True),
    ("192.168.0.10", False, False, True),
    ("100.64.0.1", False, False, True),
    ("::ffff:169.254.169.254", False, True, True),
    ("93.184.216.34", False, False, False),
    ("example.com", False, False, False),  # names are checked after resolution
])
def test_policy_table(address: str, none: bool, link_local: bool, private: bool) -> None:
    assert is_blocked(address, "none") is none
    assert is_blocked(address, "link-local") is link_local
    assert is_blocked(address, "private") is private


def test_default_keeps_the_quick_start_working() -> None:
    assert Config().security.block_targets == "link-local"


async def test_private_policy_refuses_loopback_receiver(daemon_factory: Factory) -> None:
    d = daemon_factory({"security": {"block_targets": "private"},
                        "webhook": {"retry_initial": "50ms", "retry_max": "100ms"}})
    receiver = await Receiver().start()
    try:
        async with ApiClient(d) as api:
            # A literal address is refused when the integration is registered...
            refused = await api.request("POST", BASE, {
                "id": "w1", "integration_type": "permanent",
                "callback_parameters": {"callback_url": receiver.url}}, expect=400)
            assert refused["error_code"] == "callback_url_blocked"
            # ...a name is checked where it matters: after resolution, at connect time.
            await api.webhook("w2", receiver.url.replace("127.0.0.1", "localhost"))
            await api.publish(events(1))
            entries = await api.wait_logs("w2", "retry_triggered", 1)
            assert "security.block_targets" in entries[0]["reason"]
        assert receiver.requests == []
    finally:
        await receiver.close()


async def test_default_policy_refuses_metadata_address(daemon: DaemonProcess) -> None:
    async with ApiClient(daemon) as api:
        refused = await api.request("POST", BASE, {
            "id": "w1", "integration_type": "permanent",
            "callback_parameters": {"callback_url": "http://169.254.169.254/latest/meta-data"}},
            expect=400)
        assert refused["error_code"] == "callback_url_blocked"
        assert "security.block_targets" in refused["message"]
