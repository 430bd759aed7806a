"""Device identity: inventory, DHCP leases, neighbour tables, EDNS MAC, the source order."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from netblock.devices import (
    DeviceIdentifier,
    load_inventory,
    normalise_mac,
    parse_dhcpd_leases,
    parse_dnsmasq_leases,
    parse_ip_neigh,
    parse_kea_leases,
    parse_proc_arp,
)
from netblock.yamlsrc import SourceError

INVENTORY = """\
devices:
  - name: finance-laptop
    owner: Alice
    department: Finance
    ips: [10.0.0.5]
    macs: ["AA-BB-CC-00-00-01"]
    tags: [laptop]
  - name: router-behind
    owner: Bob
    macs: [aabb.cc00.0002]
  - name: lease-known
    owner: Carol
    macs: ["aa:bb:cc:00:00:03"]
  - name: arp-known
    owner: Dave
    macs: ["aa:bb:cc:00:00:04"]
  - name: v6-known
    macs: ["aa:bb:cc:00:00:06"]
  - name: office-net
    department: Office
    cidrs: [10.0.0.0/16]
  - name: office-room
    department: Office
    cidrs: [10.0.9.0/24]
"""

DNSMASQ = """\
1900000000 aa:bb:cc:00:00:03 10.0.1.3 carol-pc 01:aa:bb:cc:00:00:03
1900000000 aa:bb:cc:00:00:99 10.0.1.9 printer-2 *
1900000000 aa:bb:cc:00:00:98 192.168.7.7 * *
duid 00:01:00:01:2c:aa:bb:cc:dd:ee:ff:00:11:22
1900000000 1234567 2001:db8::3 v6host 00:01:00:01
"""

KEA = """\
address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context,pool_id
10.0.2.1,aa:bb:cc:00:00:03,,3600,1900000000,1,0,0,old-holder.,0,,0
10.0.2.1,aa:bb:cc:00:00:77,,3600,1900003600,1,0,0,new-holder.,0,,0
10.0.2.2,aa:bb:cc:00:00:78,,3600,1900003600,1,0,0,declined,1,,0
not-an-ip,zz,,,,,,,,,,
"""

DHCPD = """\
# The format of this file is documented in the dhcpd.leases(5) manual page.
authoring-byte-order little-endian;

lease 10.0.3.4 {
  starts 4 2026/11/26 10:00:00;
  ends 4 2030/11/26 22:00:00;
  cltt 4 2026/11/26 10:00:00;
  binding state active;
  next binding state free;
  rewind binding state free;
  hardware ethernet aa:bb:cc:00:00:03;
  uid "\\001\\252\\273\\314\\000\\000\\003";
  client-hostname "carol-laptop";
}
lease 10.0.3.5 {
  starts 4 2026/11/26 10:00:00;
  ends never;
  binding state active;
  hardware ethernet aa:bb:cc:00:00:55;
}
lease 10.0.3.6 {
  binding state active;
  hardware ethernet aa:bb:cc:00:00:56;
  client-hostname "was-here";
}
lease 10.0.3.6 {
  binding state free;
  hardware ethernet aa:bb:cc:00:00:56;
}
"""

ARP = """\
IP address       HW type     Flags       HW address            Mask     Device
10.0.4.4         0x1         0x2         aa:bb:cc:00:00:04     *        eth0
10.0.4.5         0x1         0x0         00:00:00:00:00:00     *        eth0
10.0.4.6         0x1         0x2         AA:BB:CC:00:00:46     *        eth1
"""

IP6_NEIGH = """\
fe80::1 dev eth0 lladdr aa:bb:cc:00:00:06 router REACHABLE
2001:db8::6 dev eth0 lladdr aa:bb:cc:00:00:06 STALE
2001:db8::7 dev eth0  FAILED
2001:db8::8 dev eth0 INCOMPLETE
"""


def test_normalise_mac_forms() -> None:
    assert normalise_mac("AA-BB-CC-DD-EE-FF") == "aa:bb:cc:dd:ee:ff"
    assert normalise_mac("aabb.ccdd.eeff") == "aa:bb:cc:dd:ee:ff"
    assert normalise_mac("aabbccddeeff") == "aa:bb:cc:dd:ee:ff"
    assert normalise_mac("00:00:00:00:00:00") == ""
    assert normalise_mac("not a mac") == ""


def test_dnsmasq_leases() -> None:
    leases = {lease.ip: lease for lease in parse_dnsmasq_leases(DNSMASQ)}
    assert leases["10.0.1.3"].mac == "aa:bb:cc:00:00:03"
    assert leases["10.0.1.3"].hostname == "carol-pc"
    assert leases["10.0.1.3"].expires == 1900000000
    assert leases["192.168.7.7"].hostname == ""  # '*': no host name
    assert leases["2001:db8::3"].mac == ""  # DHCPv6: an IAID, not a MAC
    assert leases["2001:db8::3"].hostname == "v6host"
    assert len(leases) == 4


def test_kea_leases_later_rows_win_and_declined_ignored() -> None:
    leases = parse_kea_leases(KEA)
    assert [(lease.ip, lease.mac, lease.hostname) for lease in leases] == [
        ("10.0.2.1", "aa:bb:cc:00:00:03", "old-holder"),
        ("10.0.2.1", "aa:bb:cc:00:00:77", "new-holder"),
    ]


def test_dhcpd_leases() -> None:
    leases = parse_dhcpd_leases(DHCPD)
    assert leases[0].ip == "10.0.3.4"
    assert leases[0].mac == "aa:bb:cc:00:00:03"
    assert leases[0].hostname == "carol-laptop"
    assert time.strftime("%Y-%m-%d %H:%M", time.gmtime(leases[0].expires)) == "2030-11-26 22:00"
    assert leases[1].mac == "aa:bb:cc:00:00:55" and leases[1].expires == 0  # ends never
    assert leases[2].hostname == "was-here"
    assert leases[3].ip == "10.0.3.6" and leases[3].mac == "" and leases[3].expires < 0  # freed


def test_neighbour_tables() -> None:
    assert parse_proc_arp(ARP) == {"10.0.4.4": "aa:bb:cc:00:00:04", "10.0.4.6": "aa:bb:cc:00:00:46"}
    assert parse_ip_neigh(IP6_NEIGH) == {"fe80::1": "aa:bb:cc:00:00:06", "2001:db8::6": "aa:bb:cc:00:00:06"}


def test_real_proc_arp_parses() -> None:
    # The real kernel table: whatever it holds, the parser must accept it.
    table = parse_proc_arp(Path("/proc/net/arp").read_text())
    assert all(len(mac) == 17 for mac in table.values())


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    files = {"inventory": INVENTORY, "dnsmasq": DNSMASQ, "kea": KEA, "dhcpd": DHCPD, "arp": ARP}
    paths = {}
    for key, text in files.items():
        paths[key] = tmp_path / key
        paths[key].write_text(text)
    return paths


def identifier_for(paths: dict[str, Path], **kwargs: object) -> DeviceIdentifier:
    ident = DeviceIdentifier(
        inventory=str(paths["inventory"]),
        dnsmasq_leases=[str(paths["dnsmasq"])],
        kea_leases=[str(paths["kea"])],
        dhcpd_leases=[str(paths["dhcpd"])],
        arp_path=str(paths["arp"]),
        ip6_neigh=lambda: IP6_NEIGH,
        **kwargs,  # type: ignore[arg-type]
    )
    ident.refresh()
    return ident


def test_source_order(sources: dict[str, Path]) -> None:
    ident = identifier_for(sources)
    # 1. EDNS MAC beats the address (a router speaks for many devices).
    found = ident.identify("10.0.0.5", "aa:bb:cc:00:00:02")
    assert (found.device.name, found.source, found.device.owner) == ("router-behind", "edns-mac", "Bob")
    # 2. Inventory IP.
    found = ident.identify("10.0.0.5")
    assert (found.device.name, found.source, found.device.department) == (
        "finance-laptop",
        "inventory-ip",
        "Finance",
    )
    # 3. Lease MAC -> inventory MAC (dnsmasq, dhcpd), beating the CIDR that also covers it.
    assert ident.identify("10.0.1.3").device.name == "lease-known"
    assert ident.identify("10.0.1.3").source == "lease-mac"
    assert ident.identify("10.0.3.4").device.name == "lease-known"
    # 4. Neighbour MAC -> inventory MAC, IPv4 and IPv6.
    assert (ident.identify("10.0.4.4").device.name, ident.identify("10.0.4.4").source) == (
        "arp-known",
        "neighbour-mac",
    )
    assert ident.identify("2001:db8::6").device.name == "v6-known"
    # 5. CIDR, longest prefix first.
    assert ident.identify("10.0.9.9").device.name == "office-room"
    assert ident.identify("10.0.8.9").device.name == "office-net"
    assert ident.identify("10.0.1.9").source == "inventory-cidr"  # CIDR beats a lease host name
    # 6. Lease host name for a device the inventory does not know; Kea: the later row wins.
    found = ident.identify("192.168.7.7")
    assert found.source == "ip"  # a lease without a host name names nobody
    kea = ident.identify("172.16.0.1")
    assert (kea.device.name, kea.device.in_inventory) == ("172.16.0.1", False)
    # 7. Unknown: known by IP, with whatever MAC we learnt.
    found = ident.identify("10.0.4.6")  # in the CIDR 10.0.0.0/16
    assert found.device.name == "office-net" and found.mac == "aa:bb:cc:00:00:46"
    found = ident.identify("192.0.2.1", "aa:bb:cc:ff:ff:ff")
    assert (found.device.name, found.source, found.mac, found.device.in_inventory) == (
        "192.0.2.1",
        "ip",
        "aa:bb:cc:ff:ff:ff",
        False,
    )


def test_lease_hostname_names_unlisted_device(tmp_path: Path) -> None:
    (tmp_path / "inv.yaml").write_text("devices: []\n")
    (tmp_path / "kea.csv").write_text(KEA)
    ident = DeviceIdentifier(
        inventory=str(tmp_path / "inv.yaml"), kea_leases=[str(tmp_path / "kea.csv")], neighbours=False
    )
    ident.refresh()
    found = ident.identify("10.0.2.1")
    assert (found.device.name, found.source, found.mac, found.device.in_inventory) == (
        "new-holder",
        "lease-hostname",
        "aa:bb:cc:00:00:77",
        False,
    )


def test_lease_expired_a_day_ago_names_nobody(tmp_path: Path) -> None:
    (tmp_path / "inv.yaml").write_text("devices: []\n")
    stale = int(time.time()) - 2 * 86_400
    (tmp_path / "leases").write_text(
        f"{stale} aa:bb:cc:00:00:10 10.0.5.1 gone *\n"
        f"{int(time.time()) + 600} aa:bb:cc:00:00:11 10.0.5.2 here *\n"
    )
    ident = DeviceIdentifier(
        inventory=str(tmp_path / "inv.yaml"), dnsmasq_leases=[str(tmp_path / "leases")], neighbours=False
    )
    ident.refresh()
    assert ident.identify("10.0.5.1").source == "ip"
    assert ident.identify("10.0.5.2").device.name == "here"


def test_edns_mac_can_be_switched_off(sources: dict[str, Path]) -> None:
    ident = identifier_for(sources, edns_mac=False)
    assert ident.identify("10.0.0.5", "aa:bb:cc:00:00:02").device.name == "finance-laptop"


def test_background_refresh_picks_up_changes(sources: dict[str, Path]) -> None:
    ident = identifier_for(sources, refresh_interval=0.05)
    ident.start()
    try:
        assert ident.identify("10.0.7.7").device.name == "office-net"
        sources["dnsmasq"].write_text(DNSMASQ + "1900000000 aa:bb:cc:00:00:04 10.0.7.7 dave *\n")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and ident.identify("10.0.7.7").device.name != "arp-known":
            time.sleep(0.05)
        assert ident.identify("10.0.7.7").device.name == "arp-known"
        # A broken inventory keeps the last good one.
        sources["inventory"].write_text("devices:\n  - owner: nobody\n")
        time.sleep(0.3)
        assert ident.identify("10.0.0.5").device.name == "finance-laptop"
    finally:
        ident.stop()


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("devices:\n  - name: a\n    ips: [10.0.0.300]\n", 3, "not an IP address"),
        ("devices:\n  - name: a\n    macs: [zz]\n", 3, "not a MAC"),
        ("devices:\n  - name: a\n  - name: a\n", 3, "already defined"),
        (
            "devices:\n  - name: a\n    ips: [10.0.0.1]\n  - name: b\n    ips: [10.0.0.1]\n",
            5,
            "already belongs",
        ),
        ("devices:\n  - name: a\n    colour: red\n", 3, "unknown key"),
        ("devices:\n  - owner: x\n", 2, "'name' is required"),
        ("devices:\n  - name: a\n    cidrs: [10.0.0.0/33]\n", 3, "not a network"),
    ],
)
def test_inventory_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    with pytest.raises(SourceError) as err:
        load_inventory(path)
    assert err.value.line == line
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_example_inventory_loads() -> None:
    inventory = load_inventory(Path(__file__).resolve().parent.parent / "config" / "devices.example.yaml")
    assert inventory.by_mac["a4:83:e7:00:11:22"].name == "minister-office-phone"
    assert inventory.match_network("2001:db8:50::9").name == "reception-wifi"  # type: ignore[union-attr]
