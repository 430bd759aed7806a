"""Presentation of wire names: host names as they are, odd labels escaped (RFC 1035)."""

from __future__ import annotations

import pytest

from netblock.names import from_wire, to_wire


@pytest.mark.parametrize(("wire", "text"), [
    (b"\x06weixin\x02qq\x03com\x00", "weixin.qq.com."),
    (b"\x03WwW\x01_\x01-\x00", "WwW._.-."),
    (b"\x00", "."),
    (b"", "."),
    (b"\x0dweixin.qq.com\x00", "weixin\\.qq\\.com."),  # one label, never three
    (b"\x02a\xff\x03b c\x00", "a\\255.b\\032c."),
    (b"\x01a\x04x\\y\"\x00", "a.x\\\\y\\\"."),
])
def test_from_wire(wire: bytes, text: str) -> None:
    assert from_wire(wire) == text


def test_round_trip_of_host_names() -> None:
    for name in ("a", "a.b", "xn--fiq228c.example", "a-b_c.d0.e"):
        assert from_wire(to_wire(name)) == name + "."
