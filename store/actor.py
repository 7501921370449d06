"""Who is acting: the login user behind this process, for audit entries and rows."""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def current_actor() -> str:
    """The login user (/proc/self/loginuid), else the process's user. Env vars are not trusted."""
    uid: int | None = None
    try:
        raw = Path("/proc/self/loginuid").read_text().strip()
        value = int(raw)
        if value != 4294967295:  # (uid_t)-1: no login session
            uid = value
    except (OSError, ValueError):
        uid = None
    if uid is None:
        uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"
