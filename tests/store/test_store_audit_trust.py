"""Who signed the audit log: erasure, pinned keys, the chain of key rotations, forged keys."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from audit_forging import drop_in_retired, forge, new_key

from store import AuditError, signing
from store.audit import Action, AuditLog
from store.audit_verify import verify_log
from store.clock import Clock
from store.paths import DataPaths

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_log(tmp_path: Path, entries: int = 3) -> tuple[DataPaths, AuditLog]:
    paths = DataPaths(tmp_path / "data")
    key = signing.create(paths, "gw1")
    log = AuditLog(paths, key, Clock(fixed=T0), witness=False)
    log.append(Action.INIT, "root", gateway="gw1")
    for n in range(entries - 1):
        log.append(Action.AUTH_GRANT, "officer", refs=[f"REF-{n}"])
    return paths, log


def pin(*keys: signing.GatewayKey) -> dict[str, Any]:
    """What an allowed-signers file kept off the box yields."""
    text = "".join(
        f'gw1 namespaces="lbm-evidence" {signing.public_openssh(k.public)}\n' for k in keys
    )
    return signing.parse_allowed_signers(text, "pin", "gw1")


def check(paths: DataPaths, pinned: dict[str, Any] | None = None, **kw: Any):
    return verify_log(
        paths, signing.load_public_keys(paths), pinned=pinned, require_init=True, **kw
    )


# -- erasure ----------------------------------------------------------------------------------
def test_emptied_log_and_removed_head_are_reported_as_erased(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path)
    paths.audit_log.write_bytes(b"")
    paths.audit_head.unlink()
    result = verify_log(paths, signing.load_public_keys(paths))  # even without require_init
    assert not result.ok and "the log was erased" in result.first_problem
    paths.audit_log.unlink()
    assert "the log was erased" in check(paths).first_problem


def test_emptied_log_with_its_head_left_is_reported(tmp_path: Path) -> None:
    paths, log = make_log(tmp_path)
    paths.audit_log.write_bytes(b"")
    result = check(paths)
    assert not result.ok and "log holds no entries (erased)" in result.first_problem
    with pytest.raises(AuditError, match="log is empty"):
        log.append(Action.SEARCH, "x")  # an append does not paper over it


def test_log_must_start_with_its_init_entry(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path)
    key = signing.load(paths)
    forge(paths, key, "auth_grant", new_log=True)  # a fresh, self-consistent log
    result = check(paths)
    assert not result.ok and "starts with 'auth_grant', not init" in result.first_problem


# -- rotation chain and pins ------------------------------------------------------------------
def test_rotations_chain_from_any_pinned_key(tmp_path: Path) -> None:
    paths, log = make_log(tmp_path)
    first = signing.load(paths)
    log.rotate_key("root", "gw1")
    log.append(Action.SEARCH, "inv")
    second = signing.load(paths)
    log.rotate_key("root", "gw1")
    third = signing.load(paths)
    rotations = [e for e in log.entries() if e["action"] == "key_rotate"]
    assert [e["key"] for e in rotations] == [first.fingerprint, second.fingerprint]
    assert rotations[1]["fields"]["new_public_key"] == signing.public_openssh(third.public)
    for pinned in (first, second, third):
        result = check(paths, pin(pinned))
        assert result.ok, result.problems
    assert check(paths).signers == [first.fingerprint, second.fingerprint, third.fingerprint]
    stranger = new_key()
    result = check(paths, pin(stranger))
    assert (
        not result.ok and "no entry and no head is signed by a key pinned" in result.first_problem
    )


def test_entry_signed_by_a_key_dropped_into_retired_fails_even_unpinned(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path)
    forger = drop_in_retired(paths)
    forge(paths, forger)
    result = check(paths)
    assert not result.ok and "no key_rotate entry signed by it introduced" in result.first_problem


def test_forged_old_style_rotation_passes_unpinned_but_not_pinned(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path)
    real = signing.load(paths)
    forger = drop_in_retired(paths)
    fields = {"old_fingerprint": real.fingerprint, "new_fingerprint": forger.fingerprint}
    forge(paths, forger, "key_rotate", fields)  # looks like a rotation made before this issue
    forge(paths, forger, "auth_cancel")
    unpinned = check(paths)
    assert unpinned.ok and any("old-style key rotation" in w for w in unpinned.warnings)
    result = check(paths, pin(real))
    assert not result.ok
    assert "seq 4: signed by key" in result.first_problem and "not reached" in result.first_problem


def test_replaced_public_key_and_resigned_log_fail_against_the_pin(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path)
    real = signing.load(paths)
    forger = new_key()
    paths.signing_pub.write_text(signing.public_openssh(forger.public) + "\n")
    forge(paths, forger, "init", new_log=True)
    forge(paths, forger, "auth_grant")
    assert check(paths).ok  # internally consistent: this is all an unpinned check can say
    result = check(paths, pin(real))
    assert (
        not result.ok and "no entry and no head is signed by a key pinned" in result.first_problem
    )


def test_log_with_old_style_rotation_still_verifies(tmp_path: Path) -> None:
    """Logs written before rotations were chained: the entries before it keep verifying."""
    paths, _ = make_log(tmp_path)
    old = signing.load(paths)
    signing.rotate(paths, "gw1")  # the old, unaudited rotation...
    new = signing.load(paths)
    fields = {"old_fingerprint": old.fingerprint, "new_fingerprint": new.fingerprint}
    forge(paths, new, "key_rotate", fields)  # ...and the entry it wrote, signed by the new key
    result = check(paths)
    assert result.ok and result.entries == 4, result.problems
    assert check(paths, pin(new)).ok  # entries before are covered by the new key's chain
    assert not check(paths, pin(old)).ok  # the old key never vouched for the new one


def test_rotation_cut_off_before_the_key_was_installed_is_finished(tmp_path: Path) -> None:
    paths, log = make_log(tmp_path)
    old_private = paths.signing_key.read_bytes()
    old = signing.load(paths)
    log.rotate_key("root", "gw1")
    new_private = paths.signing_key.read_bytes()
    # the state a crash after the key_rotate entry but before the install leaves
    paths.signing_key.write_bytes(old_private)
    paths.signing_key.with_name("gateway_ed25519.next").write_bytes(new_private)
    stale = AuditLog(paths, signing.load(paths), Clock(fixed=T0), witness=False)
    assert stale.key is not None and stale.key.fingerprint == old.fingerprint
    entry = stale.append(Action.SEARCH, "inv")
    assert entry["key"] == signing.load(paths).fingerprint != old.fingerprint
    assert check(paths, pin(old)).ok


def test_a_process_holding_the_old_key_signs_with_the_new_one(tmp_path: Path) -> None:
    paths, log = make_log(tmp_path)
    daemon = AuditLog(paths, signing.load(paths), Clock(fixed=T0), witness=False)
    _, new_fp = log.rotate_key("root", "gw1")
    assert daemon.append(Action.SEGMENT_CLOSE, "capture")["key"] == new_fp
    assert check(paths).ok


def test_append_refuses_a_swapped_private_key(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path)
    shutil.copy(paths.signing_key, tmp_path / "saved")
    paths.signing_key.unlink()
    swapped = signing.create(paths, "gw1")
    log = AuditLog(paths, swapped, Clock(fixed=T0), witness=False)
    with pytest.raises(AuditError, match="is not the audit log's signing key"):
        log.append(Action.SEARCH, "x")
    assert len(paths.audit_log.read_bytes().splitlines()) == 3


def test_allowed_signers_parsing(tmp_path: Path) -> None:
    key = new_key()
    line = f'gw1,gw2 namespaces="lbm-evidence" {signing.public_openssh(key.public)} gw1'
    text = f"# comment\n\nother ssh-ed25519 {line.split()[3]}\n{line}\n"
    assert list(signing.parse_allowed_signers(text, "f", "gw2")) == [key.fingerprint]
    with pytest.raises(Exception, match="no ssh-ed25519 key for principal 'gw9'"):
        signing.parse_allowed_signers(text, "f", "gw9")
    assert json.dumps(sorted(signing.parse_allowed_signers(text, "f")))  # any principal
