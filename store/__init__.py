"""Storage layer of lbm-gateway: metadata streams, encrypted archives, keys and the audit log.

Contract: `store` imports nothing else of ours (appliance, addons, capture are its clients).
Everything written under the data directory goes through this package, which is where the
privacy rules are made hard to break: the metadata schemas have no content columns, archives
are encrypted to keys the gateway cannot use, and every access is audited.
"""


class StoreError(Exception):
    """Base class for every error raised by the store."""


class ArchiveError(StoreError):
    """An archive segment or record could not be written or read.

    The channels turn this into an audited capture gap; the message never carries content.
    """


class AuditError(StoreError):
    """The audit log could not be appended to or failed verification."""


class SchemaError(StoreError):
    """A metadata row does not fit its stream's schema (unknown or content-like column)."""


class KeyError_(StoreError):
    """A key file is missing, malformed or of the wrong kind."""
