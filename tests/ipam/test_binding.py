"""Where Gateways listen, decided before translation (ipam/binding.py), with the machine's
facts as inputs."""

from __future__ import annotations

from homeplane.ipam.binding import BindingOptions, plan


def local(addr: str) -> bool:
    return addr in ("192.168.1.10", "127.0.0.1")


def test_order_of_choices() -> None:
    gws = [("network/a", ["203.0.113.9"]), ("network/b", ["192.168.1.10"]), ("network/c", []), ("network/d", [])]
    b = plan(gws, BindingOptions(explicit={"network/a": "10.9.9.9"}), local)
    assert b.addresses == {"network/a": "10.9.9.9", "network/b": "192.168.1.10", "network/c": "127.0.1.1", "network/d": "127.0.1.2"}
    assert b.loopback == {"network/c": "127.0.1.1", "network/d": "127.0.1.2"}
    b = plan(gws, BindingOptions(default_address="0.0.0.0"), local)
    assert b.addresses["network/a"] == "0.0.0.0" and b.addresses["network/c"] == "0.0.0.0" and not b.loopback


def test_loopback_addresses_never_move() -> None:
    before = plan([("network/z", [])], BindingOptions(), local)
    assert before.addresses == {"network/z": "127.0.1.1"}
    # new Gateways that sort first do not take what network/z had
    after = plan([("network/a", []), ("network/b", []), ("network/z", [])], BindingOptions(previous=before.loopback), local)
    assert after.addresses["network/z"] == "127.0.1.1" and len(set(after.addresses.values())) == 3
