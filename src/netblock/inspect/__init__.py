"""Optional packet inspector: sees what DNS cannot (server names in TLS, QUIC and HTTP,
foreign resolvers, DoT/DoH, vendor networks), records it per device, and can enforce.

capture -> packet (frame decode) -> detect (flows, tls, quic, http) -> events + enforce.
Every parser works on raw bytes; scapy is used only to read files and in tests.
"""
