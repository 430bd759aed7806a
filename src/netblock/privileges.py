"""Dropping root after binding port 53 (reference/reliability.md, Privilege)."""

from __future__ import annotations

import importlib
import logging
import os
import pwd

log = logging.getLogger("netblock")

# Modules the server imports only after start-up (metrics endpoint, reloads, URL sources,
# IDN names). Loaded while still root: an interpreter or venv the service user cannot read
# (one under /root, say) would otherwise fail with ModuleNotFoundError after the switch.
_LATE_IMPORTS = (
    "netblock.metrics",
    "netblock.names",
    "netblock.policy.importers",
    "netblock.policy.sources",
    "encodings.idna",
    "encodings.punycode",
)


def drop_privileges(user: str) -> None:
    """Switch to `user` for good: supplementary groups, gid, then uid. Linux clears the
    permitted and effective capabilities when a root process switches to a non-zero uid."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SystemExit(f"server.user: no such user {user!r}") from None
    if entry.pw_uid == 0:
        raise SystemExit(f"server.user: {user!r} is root: nothing would be dropped")
    for name in _LATE_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getuid() == 0 or os.geteuid() == 0 or os.getgid() == 0 or os.getegid() == 0:
        raise SystemExit("could not drop root privileges")
    stdlib = os.path.dirname(os.__file__)
    if not os.access(stdlib, os.R_OK | os.X_OK):
        log.warning("the Python library at %s is not readable by %s: late imports will fail", stdlib, user)
    log.info("running as %s (uid %d)", user, entry.pw_uid)
