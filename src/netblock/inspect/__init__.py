"""Optional packet inspector: sees what DNS cannot, records it per device, and can enforce.

WeChat resolves through its own HTTP name service with built-in IPs and Kaspersky falls
back to public resolvers, so a gateway (or a mirror port) watches for:

- a blocked server name in a TLS ClientHello (stage ``sni``), a QUIC v1/v2 Initial
  (``quic``) or an HTTP request head (``http-host``), matched with the DNS server's policy;
- DNS to a resolver other than netblock (``dns-bypass``), DoT/DoQ (``dot``), DoH by
  name or address from blocklists/doh-resolvers.yaml (``doh``), traffic to blocked
  networks (``ip``); ECH and hellos without SNI are counted.

Pipeline: capture.py (AF_PACKET + kernel BPF, or a pcap/pcapng file) -> packet.py (frame
decode) -> detect.py (flows.py reassembly, tls.py, quic.py, http.py, dnsmsg.py) ->
record.py (metric, event, enforcement) -> rst.py / nft.py / nfqueue.py. Every parser
works on raw bytes; scapy only reads files, compiles filters and serves the tests.

Enforcement (opt-in, ``--enforce``): ``rst`` resets both ends from a raw socket at exact
sequence numbers, with follow-up resets; ``nft`` adds the connection (or, for address
detections, the client's use of that service) to nftables timeout sets, whose rules
reject with kernel-made resets; ``nfqueue`` judges the first 8 KB of each flow inline
(fail-open when no inspector listens). ``rst,nft`` is the passive gateway mode: no added
latency, nothing breaks if the inspector stops, and another name on the same server IP
keeps working. ``--print-nft`` prints static rules that need no inspection.
"""
