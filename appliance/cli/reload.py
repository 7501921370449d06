"""SIGHUP for the proxy and the relay: reload the configuration, the users file and the identity
map without dropping a connection.

`Reloader.reload()` reads the config file again. A file that no longer loads is refused: the
daemon keeps its configuration, says so in its log and audits `config_reload` with `ok=false`
(the loader's one-line error goes to the log only, the audit entry holds no config value).
Otherwise the keys whose values changed
are handed to the daemon's `apply(new_config, changed) -> applied` (the options it can change
live: limits, the notice, relay settings); the rest are listed as `restart_needed`. The policy
snapshot is re-read at once (the identity map and the do-not-decrypt list) and the users file is
checked again. One audit entry names the changed keys only, never their values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from appliance.cli.app import App
from appliance.config import Config, ConfigError, load_config
from store.audit import Action

# applied by the policy snapshot source itself (it watches the config file)
SNAPSHOT_KEYS = ("do_not_decrypt.",)
# what each daemon reads; a change elsewhere is another daemon's business
COMMON = ("gateway", "identity", "notice", "do_not_decrypt", "keys", "audit", "testing")
PROXY_SECTIONS = ("web", *COMMON)
RELAY_SECTIONS = ("smtp", *COMMON)


def changed_keys(old: Config, new: Config, sections: Iterable[str] = ()) -> list[str]:
    """Names of the options whose values differ (values never leave this function), in
    `sections` only when given (a daemon ignores the other daemons' sections)."""
    names = set(old.values) | set(new.values)
    wanted = tuple(f"{s}." for s in sections)
    return sorted(
        n
        for n in names
        if old.values.get(n) != new.values.get(n) and (not wanted or n.startswith(wanted))
    )


class Reloader:
    """What one daemon does on SIGHUP (see the module docstring)."""

    def __init__(
        self,
        app: App,
        daemon: str,
        apply: Callable[[Config, list[str]], Iterable[str]],
        *,
        sections: Iterable[str] = (),
        refresh: Iterable[Callable[[], object]] = (),
        log: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.app = app
        self.daemon = daemon
        self.apply = apply
        self.sections = tuple(sections)
        self.refresh = list(refresh)
        self.log = log or (lambda _event, _fields: None)
        self.reloads = 0
        self.failures = 0

    def reload(self) -> dict[str, Any]:
        """Reload now (call it off the signal handler, in the daemon's loop or a thread)."""
        app = self.app
        old = app.config
        try:
            new = load_config(app.config_path, required=app.config_explicit)
        except ConfigError as exc:
            self.failures += 1
            result: dict[str, Any] = {"ok": False, "error": str(exc)}
            self._record(result)
            return result
        changed = changed_keys(old, new, self.sections)
        applied = set(self.apply(new, changed))
        applied |= {k for k in changed if k.startswith(SNAPSHOT_KEYS)}
        app.__dict__["config"] = new  # App.config is a cached_property: later reads see it
        for fn in self.refresh:
            fn()
        self.reloads += 1
        result = {
            "ok": True,
            "changed": changed,
            "applied": sorted(k for k in changed if k in applied),
            "restart_needed": sorted(k for k in changed if k not in applied),
        }
        self._record(result)
        return result

    def _record(self, result: dict[str, Any]) -> None:
        self.log("config_reload", result)
        fields = {k: v for k, v in result.items() if k != "error"}
        self.app.audit.append(Action.CONFIG_RELOAD, self.app.actor, daemon=self.daemon, **fields)
