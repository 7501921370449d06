"""The names of audited actions (`store.audit.Action`, imported from there): one per kind of
entry the audit log records; `lbm report` counts by these names. A new kind of audited event
adds its name here, grouped by the issue that brought it."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """Every audited action; `lbm report` counts by these names."""

    INIT = "init"
    CONFIG_CHANGE = "config_change"
    AUTH_GRANT = "auth_grant"
    AUTH_URGENT = "auth_urgent"
    AUTH_RATIFY = "auth_ratify"
    AUTH_RENEW = "auth_renew"
    AUTH_REVIEW = "auth_review"
    AUTH_CANCEL = "auth_cancel"
    AUTH_EXPIRED = "auth_expired"
    AUTH_ASSIGN = "auth_assign"
    AUTH_REFUSED = "auth_refused"
    AUTH_VIEW = "auth_view"
    IDENTITY_IMPORT = "identity_import"
    IDENTITY_CHANGE = "identity_change"
    KEY_CREATE = "key_create"
    KEY_ROTATE = "key_rotate"
    KEY_REWRAP = "key_rewrap"
    KEY_DESTROY = "key_destroy"
    INVESTIGATOR_ADD = "investigator_add"
    INVESTIGATOR_REMOVE = "investigator_remove"
    DEV_IDENTITY = "dev_identity"
    SEGMENT_CLOSE = "segment_close"
    CAPTURE_GAP = "capture_gap"
    SEGMENT_TRUNCATED = "segment_truncated"
    SEARCH = "search"
    VIEW = "view"
    EXPORT = "export"
    COLLATERAL_PROPOSE = "collateral_propose"
    COLLATERAL_APPROVE = "collateral_approve"
    PURGE = "purge"
    RETENTION_REVIEW = "retention_review"
    EVIDENCE_HOLD = "evidence_hold"
    DAEMON_START = "daemon_start"
    DAEMON_STOP = "daemon_stop"
    DSN_DROPPED = "dsn_dropped"
    # evidence integrity (issue 12)
    METADATA_GAP = "metadata_gap"
    WITNESS_FAILED = "witness_failed"
    WITNESS_RESTORED = "witness_restored"
    HEAD_REPAIRED = "head_repaired"
    ARCHIVE_RECOVERED = "archive_recovered"
    # authorisation hardening (issue 13)
    OFFICER_ADD = "officer_add"
    OFFICER_END = "officer_end"
    OFFICER_KEY = "officer_key"
    POLICY_RESTORED = "policy_restored"  # a daemon's policy snapshot is fresh again (fail closed)
    # mail delivery (issue 15)
    SPOOL_QUARANTINE = "spool_quarantine"  # a broken spool entry moved aside at start
    SPOOL_REMOVE = "spool_remove"  # an operator removed a spooled message (lbm smtp queue remove)
    SPOOL_DUPLICATES = "spool_duplicates"  # entries found mid-delivery at start (may arrive twice)
    # web identity (issue 14)
    USERS_CHANGE = "users_change"  # lbm users add/remove: user name and change, never the hash
    # investigators and scrutiny (issue 16)
    SEARCH_REFUSED = "search_refused"  # a person-level search without ref, reason or access
    BUNDLE = "bundle"  # lbm archive bundle wrote a ciphertext evidence bundle (its hash)
    EXPORT_REFUSED = "export_refused"  # a bundle or export refused (no access, gateway decrypt off)
    EVIDENCE_RELEASE = "evidence_release"  # an evidence hold released (lbm archive release)
    COLLATERAL_REFUSED = "collateral_refused"  # self-approval, unknown proposal or record
    RETENTION_RUN = "retention_run"  # lbm retention run (what was due; applied or dry run)
    REPORT = "report"  # lbm report produced (period and format; counts only)
    RETENTION_REFUSED = "retention_refused"  # a hold, release or review refused (no access...)
    # deployment (issue 17)
    GATEWAY_RULES_APPLY = "gateway_rules_apply"
    GATEWAY_RULES_REMOVE = "gateway_rules_remove"
    STATUS_OFFICER_VIEW = "status_officer_view"  # lbm status --officer-view (refs shown)
    CONFIG_RELOAD = "config_reload"  # a daemon reloaded config, users file and identity on SIGHUP
    # archives on object storage (issue 19)
    ARCHIVE_UPLOAD = "archive_upload"  # a sealed segment uploaded, read back, local copy removed
    ARCHIVE_UPLOAD_CONFLICT = "archive_upload_conflict"  # an object exists with other content
