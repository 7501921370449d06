"""`lbm audit verify | show | repair-head` and `lbm status`'s witness line, through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from audit_forging import allowed_signers, drop_in_retired, forge, new_key
from lbm_testing import INV_RECIPIENT, REPO, Lbm

from store import signing
from store.audit import Action, AuditLog
from store.clock import Clock
from store.paths import DataPaths


def paths_of(lbm: Lbm) -> DataPaths:
    return DataPaths(lbm.data_dir)


def set_config(lbm: Lbm, old: str, new: str) -> None:
    cfg = lbm.data_dir / "lbm.toml"
    text = cfg.read_text()
    assert old in text
    cfg.write_text(text.replace(old, new))


def add_investigator(lbm: Lbm, name: str, **env: str) -> None:
    lbm(
        "keys", "investigator", "add", name, INV_RECIPIENT, "--principal", "p9", env=env, check=True
    )


def pin_from_status(lbm: Lbm, tmp_path: Path) -> Path:
    """The allowed-signers line `lbm status` prints, kept off the box."""
    line = json.loads(lbm("status", "--json", check=True).stdout)["allowed_signers"]
    out = tmp_path / "offbox" / "allowed_signers"
    out.parent.mkdir()
    out.write_text(line + "\n")
    return out


def test_erased_log_is_reported_not_ok(lbm: Lbm) -> None:
    paths = paths_of(lbm)
    paths.audit_log.write_bytes(b"")
    paths.audit_head.unlink()
    result = lbm("audit", "verify")
    assert result.returncode == 1, result.stdout
    assert "FAILED" in result.stdout and "the log was erased" in result.stdout
    assert "0 entries" not in result.stdout
    again = lbm("init")  # a fresh init entry would make the erased log look new
    assert again.returncode == 1 and "log erased?" in again.stderr
    assert paths.audit_log.read_bytes() == b"" and lbm("audit", "verify").returncode == 1


def test_unpinned_verify_says_what_it_did_not_check(lbm: Lbm) -> None:
    result = lbm("audit", "verify")
    assert result.returncode == 0 and "1 entries" in result.stdout
    assert "only the log's internal consistency was checked, not who signed it" in result.stdout
    assert "a rollback to an older saved log and head" in result.stdout
    assert "forgery by someone holding the gateway's private key" in result.stdout


def test_pin_follows_rotations_and_rejects_a_forged_key(lbm: Lbm, tmp_path: Path) -> None:
    pin = pin_from_status(lbm, tmp_path)
    lbm("keys", "rotate-signing", check=True)
    add_investigator(lbm, "alice")
    lbm("keys", "rotate-signing", check=True)
    pinned = lbm("audit", "verify", "--allowed-signers", str(pin))
    assert pinned.returncode == 0, pinned.stdout
    assert "pinned key chain" in pinned.stdout and "internal consistency" not in pinned.stdout
    copy = tmp_path / "copy"  # off the box: only audit/ and the pin, no keys, no config
    shutil.copytree(lbm.data_dir / "audit", copy / "audit")
    offbox = Lbm(copy)("audit", "verify", "--allowed-signers", str(pin))
    assert offbox.returncode == 0, offbox.stdout + offbox.stderr
    assert offbox.stdout.splitlines()[0] == pinned.stdout.splitlines()[0]
    # someone with write access drops a key of theirs in keys/retired and writes as "the gateway"
    paths = paths_of(lbm)
    real = signing.load(paths)
    forger = drop_in_retired(paths)
    rotation = {"old_fingerprint": real.fingerprint, "new_fingerprint": forger.fingerprint}
    forge(paths, forger, "key_rotate", rotation)
    forge(paths, forger, "auth_cancel")
    unpinned = lbm("audit", "verify")
    assert unpinned.returncode == 0 and "old-style key rotation" in unpinned.stdout
    result = lbm("audit", "verify", "--allowed-signers", str(pin))
    assert result.returncode == 1
    assert "not reached from the key(s) pinned in" in result.stdout


def test_pin_rejects_a_replaced_public_key_and_rewritten_log(lbm: Lbm, tmp_path: Path) -> None:
    pin = pin_from_status(lbm, tmp_path)
    paths = paths_of(lbm)
    forger = new_key()
    paths.signing_pub.write_text(signing.public_openssh(forger.public) + "\n")
    forge(paths, forger, "init", new_log=True)
    assert lbm("audit", "verify").returncode == 0  # consistent: all an unpinned check can say
    result = lbm("audit", "verify", "--allowed-signers", str(pin))
    assert result.returncode == 1 and "no entry and no head is signed by a key pinned" in (
        result.stdout
    )
    wrong = allowed_signers(tmp_path / "other", new_key(), principal="gw9")
    bad = lbm("audit", "verify", "--allowed-signers", str(wrong))
    assert bad.returncode == 2 and "no ssh-ed25519 key for principal 'gw1'" in bad.stderr


def test_witness_socket_receives_heads_and_catches_a_rollback(lbm: Lbm, tmp_path: Path) -> None:
    journal = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(journal))
    sock.setblocking(False)
    set_config(lbm, 'witness_socket = "/dev/log"', f'witness_socket = "{journal}"')
    paths = paths_of(lbm)
    try:
        add_investigator(lbm, "alice")
        saved = (paths.audit_log.read_bytes(), paths.audit_head.read_bytes())
        add_investigator(lbm, "bob")
        lbm("keys", "investigator", "remove", "bob", check=True)
        heads = []
        while True:
            try:
                heads.append(sock.recv(65536))
            except BlockingIOError:
                break
    finally:
        sock.close()
    assert len(heads) == 3 and all(b"lbm-audit[" in h and b"]: head {" in h for h in heads)
    witness = tmp_path / "journal-export.txt"
    witness.write_bytes(b"\n".join(heads) + b"\n")
    ok = lbm("audit", "verify", "--witness", str(witness))
    assert ok.returncode == 0 and "3 witnessed heads" in ok.stdout, ok.stdout
    assert "no --witness" not in ok.stdout
    paths.audit_log.write_bytes(saved[0])  # roll back to the older saved pair
    paths.audit_head.write_bytes(saved[1])
    assert lbm("audit", "verify").returncode == 0  # undetectable without the witness...
    result = lbm("audit", "verify", "--witness", str(witness))
    assert result.returncode == 1 and "is missing from the log (rolled back" in result.stdout


def test_witness_outage_is_shown_and_audited_once(lbm: Lbm, tmp_path: Path) -> None:
    missing = tmp_path / "no-journal"
    set_config(lbm, 'witness_socket = "/dev/log"', f'witness_socket = "{missing}"')
    for name in ("a1", "a2", "a3"):
        add_investigator(lbm, name)
    status = lbm("status", check=True).stdout
    assert "audit witness  FAILING since " in status and f"(ENOENT {missing})" in status
    data = json.loads(lbm("status", "--json", check=True).stdout)["witness"]
    assert data["state"] == "failing" and data["outage_failures"] >= 3
    shown = lbm("audit", "show", "--action", "witness_failed", check=True).stdout.splitlines()
    assert len(shown) == 1  # one entry per outage, not one per append


def test_backwards_time_and_fake_clock_are_warnings_tampering_still_fails(lbm: Lbm) -> None:
    set_config(lbm, "syslog = true", "syslog = false")  # no witness entries: fixed seqs
    add_investigator(lbm, "alice", LBM_FAKE_NOW="2030-01-01T00:00:00Z")
    add_investigator(lbm, "bob", LBM_FAKE_NOW="2029-01-01T00:00:00Z")
    result = lbm("audit", "verify")
    assert result.returncode == 0, result.stdout
    assert "warning: seq 3: time goes backwards (2029-01-01T00:00:00Z after 2030" in result.stdout
    assert "warning: 2 entries written under the fake clock" in result.stdout
    assert lbm("audit", "verify", "--strict").returncode == 3
    data = json.loads(lbm("audit", "verify", "--json").stdout)
    assert data["ok"] and data["fake_clock_entries"] == 2 and len(data["warnings"]) == 2
    log = paths_of(lbm).audit_log
    log.write_bytes(log.read_bytes().replace(b'"investigator":"alice"', b'"investigator":"alicf"'))
    tampered = lbm("audit", "verify", "--strict")
    assert tampered.returncode == 1 and "seq 2: bad signature" in tampered.stdout


APPENDER = """
import sys
from pathlib import Path
from store import signing
from store.audit import Action, AuditLog
from store.clock import Clock
from store.paths import DataPaths
paths = DataPaths(Path(sys.argv[1]))
log = AuditLog(paths, signing.load(paths), Clock(), witness=False)
print("ready", flush=True)
while True:
    log.append(Action.SEARCH, "loop")
"""


def test_kill_9_mid_append_then_verify_and_repair_head(lbm: Lbm) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for attempt in range(60):
        proc = subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(lbm.data_dir)], stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.03 + attempt % 5 * 0.011)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        result = lbm("audit", "verify")
        assert result.returncode == 0, result.stdout  # a kill is never "tampering"
        if "interrupted append" in result.stdout:
            break
    else:
        raise AssertionError("no kill landed between a line and its head")
    assert "appended after the last signed head (interrupted append" in result.stdout
    repaired = lbm("audit", "repair-head", check=True)
    assert "head re-signed" in repaired.stdout
    assert len(lbm("audit", "show", "--action", "head_repaired").stdout.splitlines()) == 1
    after = lbm("audit", "verify")
    assert after.returncode == 0 and "interrupted" not in after.stdout
    assert "head is current" in lbm("audit", "repair-head", check=True).stdout


def test_repair_head_refuses_a_torn_line_and_explains(lbm: Lbm) -> None:
    log = paths_of(lbm).audit_log
    with log.open("ab") as fh:
        fh.write(b'{"seq":2,"ts":"20')
    result = lbm("audit", "repair-head")
    assert result.returncode == 1
    assert "last line is incomplete" in result.stderr and "remove those bytes by hand" in (
        result.stderr
    )
    assert lbm("audit", "verify").returncode == 1


def test_show_escapes_free_text_and_refuses_unknown_actions(lbm: Lbm) -> None:
    paths = paths_of(lbm)
    log = AuditLog(paths, signing.load(paths), Clock(), witness=False)
    forged_line = "\n     9 2026-01-01T00:00:00Z init                 actor=root"
    log.append(
        Action.AUTH_CANCEL,
        "mallory" + forged_line,
        refs=["REF\r1"],
        reason="done" + forged_line,
        name="\x1b[2J\u202eevil",
    )
    out = lbm("audit", "show", check=True).stdout
    assert len(out.splitlines()) == 2  # the init entry and the cancel, no forged third line
    assert "\x1b" not in out and "\u202e" not in out and "\r" not in out
    assert "actor=mallory\\n     9 2026" in out and "name=\\x1b[2J\\u202eevil" in out
    bad = lbm("audit", "show", "--action", "no_such\naction")
    assert bad.returncode == 2 and "no_such\\naction" in bad.stderr
    assert "one of: init, config_change," in bad.stderr and "witness_failed" in bad.stderr
