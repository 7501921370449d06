"""run/policy.json, written by a daemon's policy snapshot source (fail closed), read for
`lbm status`: whether the daemons' policy is fresh, or stale and authorising nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from appliance.cli.textsafe import safe


def policy_state(run_dir: Path) -> dict[str, Any]:
    """The last state a daemon wrote ({} when no daemon has run)."""
    path = run_dir / "policy.json"
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {"state": "unreadable", "error": f"{path} is not readable JSON"}
    return data if isinstance(data, dict) else {"state": "unreadable"}


def policy_line(state: dict[str, Any]) -> str:
    """One line for an operator: counts and times only, no principal or reference."""
    if state.get("state") == "stale":
        line = (
            f"STALE since {safe(str(state.get('stale_since')))}: every principal gets metadata "
            f"only until the registry can be read ({safe(str(state.get('error')))})"
        )
        pid = state.get("pid")
        if isinstance(pid, int) and not _alive(pid):
            line += f"; reported by pid {pid}, which has ended"
        return line
    return f"{safe(str(state.get('state')))}: {safe(str(state.get('error')))}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
