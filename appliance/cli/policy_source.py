"""The policy snapshot source a daemon (or `lbm capture replay`) reads decisions from.

Kept apart from `auth_cmd` (which re-exports it) so that a capture replay reaches its first
packet without importing the authorisation commands and what they need (evidence retention,
officer signatures, pyarrow)."""

from __future__ import annotations

from appliance.cli.app import App
from appliance.config import load_config
from appliance.config.do_not_decrypt import do_not_decrypt_globs
from appliance.policy.snapshot import SnapshotSource


def snapshot_source(app: App, *, interval: float = 0.25, daemon: bool = True) -> SnapshotSource:
    """The policy snapshot source for a daemon: registry changes and config edits reload it.
    Only a daemon (`daemon`) reports its state in run/policy.json for `lbm status`: a one-shot
    command (`lbm capture replay`) must not overwrite a running daemon's state, and starts
    without the file's write and fsync."""
    config_path = app.config_path

    def load_dnd() -> list[str]:
        values = load_config(config_path, required=False).values
        return do_not_decrypt_globs(
            values["do_not_decrypt.hosts"], values["do_not_decrypt.categories"]
        )

    # polled by its own thread, so an outage is noticed (and shown) even while no traffic asks
    return SnapshotSource(
        app.paths,
        config_path=config_path,
        load_do_not_decrypt=load_dnd,
        interval=interval,
        audit=app.audit,  # fail closed: a policy_stale gap is audited and shown by `lbm status`
        actor=app.actor,
        state_file=app.paths.run / "policy.json" if daemon else None,
    ).start()
