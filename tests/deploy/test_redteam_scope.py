"""Red-team play against `transparent_scope = "subjects"`: watching when `nft` runs.

Any local user on the gateway sees processes in `ps`. The scope sync used to run `nft -f -` only
when the subject sets had to change, so the instants of those runs were the instants a
subject's address lease began or ended (or a grant or cancellation took effect): matched with
DHCP or badge logs, that names the subject. Loads now keep a steady beat, change or not.

Boundaries replaced here: `nft` (the `load` callable; tests/deploy/test_scope.py runs the real
one in a network namespace), the policy snapshot's answer (`subject_addresses`) and the
monotonic clock, so the test plays 20 s of the loop in no time.
"""

from __future__ import annotations

import pytest

from appliance.cli import gateway_scope


def _loads(monkeypatch: pytest.MonkeyPatch, changes: dict[float, frozenset[str]]) -> list[float]:
    """Run the loop body every INTERVAL for 20 s; the subject addresses change at the given
    instants. Returns the instants `nft` ran, and checks each change took effect in time."""
    clock = [0.0]
    wanted = [frozenset[str]()]
    monkeypatch.setattr(gateway_scope.time, "monotonic", lambda: 1000.0 + clock[0])
    monkeypatch.setattr(gateway_scope, "subject_addresses", lambda _snap, _at: wanted[0])
    ran: list[float] = []
    loaded: list[frozenset[str]] = [frozenset()]

    def load(addresses: frozenset[str]) -> None:
        ran.append(clock[0])
        loaded[0] = addresses

    sync = gateway_scope.ScopeSync(lambda: None, lambda: None, lambda _m: None, load=load)  # type: ignore[arg-type,return-value]
    pending = sorted(changes.items())
    while clock[0] <= 20.0:
        while pending and pending[0][0] <= clock[0]:
            wanted[0] = pending.pop(0)[1]
            changed_at = clock[0]
        sync.step()
        if changes and loaded[0] != wanted[0]:
            assert clock[0] - changed_at < gateway_scope.VERIFY_EVERY + 0.01
        clock[0] += gateway_scope.INTERVAL
    return ran


def test_nft_runs_on_a_steady_beat_whatever_the_subjects_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quiet = _loads(monkeypatch, {})
    busy = _loads(monkeypatch, {3.5: frozenset({"10.0.0.7"}), 7.0: frozenset(),
                                11.5: frozenset({"10.0.0.7", "10.0.0.9"})})  # fmt: skip
    assert busy == quiet  # the same instants: a lease change is not visible in `ps`
    beat = gateway_scope.VERIFY_EVERY
    assert quiet == [n * beat for n in range(int(20 / beat) + 1)]
