"""Presentation of wire names: host names as they are, odd labels escaped (RFC 1035)."""

from __future__ import annotations

import random

import pytest

from netblock.names import escape_label, from_wire, to_wire


@pytest.mark.parametrize(("wire", "text"), [
    (b"\x06weixin\x02qq\x03com\x00", "weixin.qq.com."),
    (b"\x03WwW\x01_\x01-\x00", "WwW._.-."),
    (b"\x00", "."),
    (b"", "."),
    (b"\x0dweixin.qq.com\x00", "weixin\\.qq\\.com."),  # one label, never three
    (b"\x02a\xff\x03b c\x00", "a\\255.b\\032c."),
    (b"\x01a\x04x\\y\"\x00", "a.x\\\\y\\\"."),
    (b"\x02a.\x01b\x00", "a\\..b."),  # a dot at the end of a label
    (b"\x01.\x00", "\\.."),
    (b"\x02\xc3\xa9\x03xn-\x00", "\\195\\169.xn-."),  # octets >= 0x80
    (b"\x01a\x00\x03com\x00", "a."),  # the name ends at the root label
    (b"\x01a\x01b", "a.b."),  # no root label: it ends with the bytes
    (b"\x05ab", "ab."),  # a label cut short
    (b"\x30" + b"a" * 48 + b"\x2d" + b"b" * 45 + b"\x00", "a" * 48 + "." + "b" * 45 + "."),  # lengths '0' and '-'
])
def test_from_wire(wire: bytes, text: str) -> None:
    assert from_wire(wire) == text


def test_round_trip_of_host_names() -> None:
    for name in ("a", "a.b", "xn--fiq228c.example", "a-b_c.d0.e"):
        assert from_wire(to_wire(name)) == name + "."


def reference(wire: bytes) -> str:
    """The plain reading: label by label, each escaped (a host name's labels need nothing)."""
    labels, i = [], 0
    while i < len(wire) and wire[i]:
        labels.append(wire[i + 1 : i + 1 + wire[i]])
        i += 1 + wire[i]
    return ".".join(escape_label(label) for label in labels) + "." if labels else "."


def test_from_wire_agrees_with_the_plain_reading() -> None:
    rng = random.Random(1035)
    octets = [b"abcXYZ019_-", b"abcXYZ019_-.", b"a.\\\"0-", bytes(range(256))]
    for _ in range(20_000):
        alphabet = rng.choice(octets)
        wire = b"".join(bytes((n,)) + bytes(rng.choice(alphabet) for _ in range(n))
                        for n in (rng.choice((1, 2, 3, 9, 45, 48, 57, 63)) for _ in range(rng.randint(0, 4))))
        wire += rng.choice((b"\x00", b"", b"\x00\x01x"))
        if rng.random() < 0.1:
            wire = wire[: rng.randint(0, len(wire))]
        assert from_wire(wire) == reference(wire), wire
