"""netblock: a DNS forwarder and packet inspector that enforces vendor bans."""

__version__ = "0.1.0"
