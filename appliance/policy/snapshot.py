"""Policy snapshots for the channels: `Snapshot` (immutable, what `decide` reads; in
`snapshot_data`) and `SnapshotSource` (keeps a daemon's snapshot fresh and fails closed; in
`snapshot_source`). Import both from here."""

from __future__ import annotations

from appliance.policy.snapshot_data import (
    CachedIdentityLoader,
    IdentityResolver,
    NoIdentity,
    Snapshot,
    glob_match,
    load_identity_map,
    load_snapshot,
    normalise_globs,
)
from appliance.policy.snapshot_source import POLL_BUSY_MS, STALE_AFTER, SnapshotSource

__all__ = [
    "POLL_BUSY_MS",
    "STALE_AFTER",
    "CachedIdentityLoader",
    "IdentityResolver",
    "NoIdentity",
    "Snapshot",
    "SnapshotSource",
    "glob_match",
    "load_identity_map",
    "load_snapshot",
    "normalise_globs",
]
