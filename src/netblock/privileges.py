"""Dropping root after binding port 53 (reference/reliability.md, Privilege)."""

from __future__ import annotations

import logging
import os
import pwd

log = logging.getLogger("netblock")


def drop_privileges(user: str) -> None:
    """Switch to `user` for good: supplementary groups, gid, then uid. Linux clears the
    permitted and effective capabilities when a root process switches to a non-zero uid."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SystemExit(f"server.user: no such user {user!r}") from None
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("could not drop root privileges")
    log.info("running as %s (uid %d)", user, entry.pw_uid)
