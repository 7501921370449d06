"""`lbm housekeeping run`: the always-on maintenance daemon.

Each pass (every `[housekeeping] interval_seconds`): records in the audit log every authorisation
that has expired since the last pass (urgent grants not ratified within 72 hours included),
re-imports the identity feed when the file changed, prints review-due and expiry warnings, and
once per UTC day runs the retention check (removing what is due only with `[retention]
auto_apply`). With `[store] archive_root = "s3://..."` each pass also uploads the sealed
segments (store/archive_upload.py: verified by reading back, then the local copy removed; a
failure leaves them for the next pass). It holds no content and decrypts nothing.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

import click

from appliance.cli import daemonlog
from appliance.cli.app import App, fail, pass_app
from appliance.cli.daemon_metrics import gateway_counters
from appliance.counters import StatusWriter
from appliance.evidence import retention_apply
from appliance.evidence.retention import Settings
from appliance.policy.expiry import record_expiries
from appliance.policy.identity import import_if_changed
from store import StoreError, sqlite, witness
from store.archive_upload import ArchiveUploader, archive_is_remote
from store.audit import Action
from store.keystore_remote import check_store_roots
from store.readiness import announce_ready


def _counts(result: dict[str, Any]) -> dict[str, Any]:
    """An import's numbers only (no principal, address or user name reaches the log)."""
    return {
        k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


class Housekeeper:
    def __init__(self, app: App) -> None:
        self.app = app
        self.feed_state: dict[str, Any] = {}
        self.passes = 0
        self.feed_imports = 0
        self.feed_failures = 0
        self.upload_failures = 0  # segment uploads that failed (retried next pass)
        self.upload_pending = 0  # sealed segments awaiting upload after the last pass

    def _log(self, event: str, level: str = "info", **fields: Any) -> None:
        daemonlog.log("housekeeping", event, level, **fields)

    def expiries(self) -> list[str]:
        conn = sqlite.connect(self.app.paths.registry)
        try:
            refs = record_expiries(conn, self.app.audit, self.app.actor, self.app.clock.now())
        finally:
            conn.close()
        if refs:  # how many, not which: the references are in the audit log (auth_expired)
            self._log("authorisations_expired", count=len(refs))
        return refs

    def identity_feed(self) -> dict[str, Any] | None:
        path = self.app.config.identity_feed(self.app.paths.root)
        if path is None:
            return None
        try:
            result: dict[str, Any] | None = import_if_changed(
                self.app.paths, path, self.feed_state, audit=self.app.audit, actor=self.app.actor
            )
        except Exception as exc:  # process boundary: a bad feed must not stop housekeeping
            self.feed_failures += 1
            # the feed's own errors name the file and line (the operator's file, metadata only)
            self._log(
                "identity_feed_failed", "warning", error=type(exc).__name__, detail=str(exc)[:300]
            )
            return None
        if result:
            self.feed_imports += 1
            self._log("identity_feed_imported", **_counts(result))
        return result

    def retention(self) -> dict[str, Any] | None:
        """The daily retention check (audited `retention_run`); removes only with auto_apply."""
        conn = sqlite.connect(self.app.paths.registry)
        try:
            done = retention_apply.daily(
                conn, self.app.paths, Settings.from_config(lambda k: self.app.config[k]),
                self.app.clock.now(), self.app.audit, self.app.actor,
                auto_apply=bool(self.app.config["retention.auto_apply"]),
            )  # fmt: skip
        except Exception as exc:  # process boundary: retention must not stop housekeeping
            self._log(f"retention check failed: {exc}")
            return None
        finally:
            conn.close()
        if done:
            self._log(f"retention check: {done['counts']}")
        return done

    def archive_upload(self) -> dict[str, int] | None:
        """Upload sealed segments to the object store (counts only reach the log)."""
        if not archive_is_remote(self.app.paths):
            return None
        try:
            result = ArchiveUploader(self.app.paths, audit=self.app.audit, actor=self.app.actor)
            done = result.run()
        except Exception as exc:  # process boundary: an upload must not stop housekeeping
            self.upload_failures += 1
            self._log("archive_upload_failed", "warning", error=type(exc).__name__)
            return None
        counts: dict[str, Any] = dict(done.counts())
        self.upload_failures += counts["failed"]
        self.upload_pending = counts["pending"]
        if done.failed or done.error:
            self._log("archive_upload_failed", "warning", **counts)
        elif done.uploaded:
            self._log("archive_uploaded", **counts)
        return done.counts()

    def one_pass(self) -> dict[str, Any]:
        self.passes += 1
        return {
            "expired": self.expiries(),
            "identity": self.identity_feed(),
            "retention": self.retention(),
            "archive_upload": self.archive_upload(),
        }


@click.group("housekeeping")
def housekeeping() -> None:
    """The maintenance daemon (expiries, identity feed, warnings)."""


@housekeeping.command("run")
@click.option("--once", is_flag=True, help="do one pass and exit")
@pass_app
def run(app: App, once: bool) -> None:
    """Run housekeeping passes until SIGTERM/SIGINT."""
    app.require_initialised()
    _ = app.config  # loads [store] into app.paths
    if app.paths.store_settings.any_remote:
        try:  # a keystore in the archive's bucket, or a versioned one: refused at start
            check_store_roots(app.paths.store_settings)
        except StoreError as exc:
            fail(str(exc), 2)
        except OSError as exc:  # unreachable now: checked again before every upload
            daemonlog.log("housekeeping", "store_unreachable", "warning", detail=str(exc)[:200])
    keeper = Housekeeper(app)
    if once:
        click.echo(json.dumps(keeper.one_pass(), sort_keys=True, default=str))
        return
    stop = threading.Event()
    hup = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    def on_hup(_signum: int, _frame: object) -> None:  # a pass now (the feed re-read)
        hup.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    status = StatusWriter(
        app.paths.run, "housekeeping", gateway_counters(app.paths, keeper),
        errors={"witness_failed": lambda: witness.load_state(app.paths.audit_dir).failures_total},
    )  # fmt: skip
    app.audit.append(Action.DAEMON_START, app.actor, daemon="housekeeping")
    app.paths.run.mkdir(parents=True, exist_ok=True)
    ready = announce_ready(app.paths.run, "housekeeping")  # run/housekeeping.ready + READY=1
    interval = float(app.config["housekeeping.interval_seconds"])
    try:
        while not stop.is_set():
            keeper.one_pass()
            due = time.monotonic() + interval
            while not stop.is_set() and not hup.is_set() and time.monotonic() < due:
                status.tick()  # status, counters and the watchdog every second
                stop.wait(min(1.0, max(0.0, due - time.monotonic())))
            hup.clear()
    finally:
        status.close()
        ready.unlink(missing_ok=True)
        app.audit.append(Action.DAEMON_STOP, app.actor, daemon="housekeeping")
    sys.exit(0)
