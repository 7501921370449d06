"""Policy: who is recorded in full, when, and on which channel.

Contract (what the rest of lbm-gateway may rely on):

- `appliance.policy.model`: the shared vocabulary (case types, purposes, channels, roles, ranks)
  and the immutable `Authorisation` (its application plus its append-only history) and `Decision`.
- `appliance.policy.rules`: pure rule functions (officer role by case type, expiry arithmetic with
  month-end clamping, urgent 72 h, ratification, renewal, reviews, warnings). No I/O.
- `appliance.policy.registry`: the authorisation register in registry.sqlite (authorisations,
  append-only history, assignments); every change and every refusal is audited.
- `appliance.policy.snapshot`: an immutable `Snapshot` (authorisations, identity map,
  do-not-decrypt globs) and a `SnapshotSource` that reloads it within a second of a change to the
  registry (`PRAGMA data_version`) or the config file; `source.current()` is cheap.
- `appliance.policy.decide`: the pure `decide(snapshot, principal, channel, at, *, server_name)`
  that every channel asks before recording content.

This package imports only `store` (checked by import-linter). Errors raised here are
`PolicyError` or one of its subclasses; their messages never carry monitored content.
"""


class PolicyError(Exception):
    """Base class of every error raised by appliance.policy."""


class RuleViolation(PolicyError):
    """An operation on an authorisation is refused by one of the policy's rules."""


class RegistryError(PolicyError):
    """The registry cannot do what was asked (unknown reference, unreadable data, ...)."""


class InvalidInput(PolicyError):
    """A value is malformed (unknown purpose, bad reference, unparseable time...): a usage error,
    as opposed to a well-formed request that a rule refuses (`RuleViolation`)."""
