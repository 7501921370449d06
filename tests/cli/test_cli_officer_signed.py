"""Signed CA1 applications and statements through the real CLI, signed with stock `ssh-keygen`
(`-Y sign -n lbm-ca1`) and checked against the officer register's keys; the evidence directory
verifies with `ssh-keygen -Y verify` alone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from lbm_testing import INV_RECIPIENT, Lbm, Result

from store import investigators as inv_table
from store import sqlite as store_sqlite
from store.paths import DataPaths

T0 = "2026-03-10T09:30:00Z"
APP = """\
ref = "{ref}"
subject = "p12345"
case_type = "criminal"
purposes = ["preventing_or_detecting_crime"]
channels = ["web", "email"]
officer = "p100"
necessity = "needed to establish facts"
proportionality = "least intrusive means"
collateral = "family mail excluded"
ripa_considered = true
investigators = ["inv1"]
start = {start}
"""


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_name(path.name + ".pub").read_text()


def sign(key: Path, file: Path, namespace: str = "lbm-ca1") -> Path:
    file.with_name(file.name + ".sig").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", namespace, str(file)],
        check=True,
        capture_output=True,
    )
    return file.with_name(file.name + ".sig")


def refused(result: Result, text: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [x for x in result.stderr.splitlines() if not x.startswith("lbm: warning:")]
    assert len(lines) == 1 and text in lines[0], result.stderr


@pytest.fixture
def signed(lbm: Lbm, tmp_path: Path) -> tuple[Lbm, dict[str, Path]]:
    """Officers p100 (HoPS) and p110 (ACU) with their own keys; signatures then required."""
    conn = store_sqlite.connect(DataPaths(lbm.data_dir).registry)
    inv_table.add(conn, "inv1", INV_RECIPIENT, "p901", "2026-01-01T00:00:00Z")
    conn.close()
    keys = {"p100": tmp_path / "hops.key", "p110": tmp_path / "acu.key"}
    for principal, role, rank in (
        ("p100", "head_of_professional_standards", "superintendent"),
        ("p110", "acu_inspector", "inspector"),
    ):
        pub = keygen(keys[principal])
        lbm("officer", "add", principal, "--name", f"Officer {principal}", "--role", role,
            "--rank", rank, "--from", "2026-01-01T00:00:00Z", "--ssh-key", pub,
            check=True)  # fmt: skip
    config = lbm.data_dir / "lbm.toml"
    text = config.read_text().replace(
        "require_officer_signature = false", "require_officer_signature = true"
    )
    config.write_text(text)
    lbm.auto_officers = False
    return lbm, keys


def application(tmp_path: Path, ref: str = "CA1-7", start: str | None = T0) -> Path:
    path = tmp_path / f"{ref}.toml"
    text = APP.format(ref=ref, start=start)
    if start is None:
        text = text.replace("start = None\n", "")
    path.write_text(text)
    return path


def grant(lbm: Lbm, app: Path, sig: Path | None, *extra: str, when: str = T0) -> Result:
    args = ["auth", "grant", "--from-file", str(app), *extra]
    if sig is not None:
        args += ["--signature", str(sig)]
    return lbm(*args, env={"LBM_FAKE_NOW": when})


def test_signed_application_granted_and_evidence_verifies_with_ssh_keygen(
    signed: tuple[Lbm, dict[str, Path]], tmp_path: Path
) -> None:
    lbm, keys = signed
    app = application(tmp_path)
    sig = sign(keys["p100"], app)
    result = grant(lbm, app, sig, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["officer"]["name"] == "Officer p100"
    entry = json.loads((lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["action"] == "auth_grant"
    sha = entry["fields"]["signature"]["signed_sha256"]
    assert sha == __import__("hashlib").sha256(app.read_bytes()).hexdigest()
    evidence = tmp_path / "evidence"
    shown = lbm("auth", "show", "CA1-7", "--evidence", str(evidence), env={"LBM_FAKE_NOW": T0})
    assert shown.returncode == 0, shown.stderr
    (signed_file,) = evidence.glob("*-application.toml")
    assert signed_file.read_bytes() == app.read_bytes()
    check = subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(evidence / "allowed_signers"), "-I", "p100",
         "-n", "lbm-ca1", "-s", str(signed_file) + ".sig"],
        input=signed_file.read_bytes(), capture_output=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    viewed = json.loads((lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()[-1])
    assert viewed["action"] == "auth_view" and viewed["fields"]["signed_sha256"] == [sha]
    # the evidence directory is never overwritten
    again = lbm("auth", "show", "CA1-7", "--evidence", str(evidence))
    assert again.returncode == 1 and "exists already" in again.stderr


def test_bad_signatures_refused(signed: tuple[Lbm, dict[str, Path]], tmp_path: Path) -> None:
    lbm, keys = signed
    app = application(tmp_path)
    refused(grant(lbm, app, None), "must be signed by the officer")
    # another officer's key
    refused(grant(lbm, app, sign(keys["p110"], app)), "not a valid signature of officer p100")
    # a changed byte after signing
    sig = sign(keys["p100"], app)
    app.write_text(APP.format(ref="CA1-7", start=T0).replace("family", "Family"))
    refused(grant(lbm, app, sig), "not a valid signature")
    # a signature over another application
    other = application(tmp_path, "CA1-8")
    refused(grant(lbm, application(tmp_path), sign(keys["p100"], other)), "not a valid signature")
    # the wrong namespace
    app = application(tmp_path)
    wrong = tmp_path / "wrong.sig"
    sign(keys["p100"], app, "file").rename(wrong)
    refused(grant(lbm, app, wrong), "namespace")
    # options cannot change a signed application
    result = grant(lbm, app, sign(keys["p100"], app), "--channel", "packets")
    assert result.returncode == 2 and "every field comes from the signed file" in result.stderr
    listed = lbm("auth", "list", "--all", "--json")
    assert json.loads(listed.stdout) == []
    actions = [json.loads(x)["action"] for x in (lbm.data_dir / "audit" / "audit.jsonl").open()]
    assert actions.count("auth_refused") >= 5


def test_expired_role_refused_even_with_a_good_signature(
    signed: tuple[Lbm, dict[str, Path]], tmp_path: Path
) -> None:
    lbm, keys = signed
    # ending a role is a register change: refused unsigned while signatures are required
    refused(lbm("officer", "end", "p100", "--at", "2026-03-01T00:00:00Z"), "register signer")
    config = lbm.data_dir / "lbm.toml"
    config.write_text(config.read_text().replace("require_officer_signature = true",
                                                 "require_officer_signature = false"))  # fmt: skip
    assert lbm("officer", "end", "p100", "--at", "2026-03-01T00:00:00Z").returncode == 0
    app = application(tmp_path)
    refused(grant(lbm, app, sign(keys["p100"], app)), "p100 holds no registered role")


def test_signed_statements_cannot_be_replayed(
    signed: tuple[Lbm, dict[str, Path]], tmp_path: Path
) -> None:
    lbm, keys = signed
    app = application(tmp_path)
    assert grant(lbm, app, sign(keys["p100"], app)).returncode == 0
    window = {"LBM_FAKE_NOW": "2026-06-01T00:00:00Z"}
    stmt = tmp_path / "renew.toml"
    stmt.write_text(
        'ref = "CA1-7"\naction = "renew"\nofficer = "p110"\n'
        'expiry = 2026-06-10T09:30:00Z\nresults = "two suspects identified"\n'
    )
    unsigned = lbm("auth", "renew", "CA1-7", "--officer", "p110", "--results", "x", env=window)
    refused(unsigned, "the renew statement must be signed")
    sig = sign(keys["p110"], stmt)
    # for another act or another officer: refused
    refused(
        lbm("auth", "review", "CA1-7", "--officer", "p110", "--statement", str(stmt),
            "--signature", str(sig), env=window),
        "the signed statement is for renew, not review",
    )  # fmt: skip
    refused(
        lbm("auth", "renew", "CA1-7", "--officer", "p100", "--statement", str(stmt),
            "--signature", str(sig), env=window),
        "not a valid signature of officer p100",
    )  # fmt: skip
    ok = lbm("auth", "renew", "CA1-7", "--officer", "p110", "--statement", str(stmt),
             "--signature", str(sig), "--json", env=window)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["expiry"] == "2026-09-10T09:30:00Z"
    # the same statement again, once the next window opens: the expiry it names has passed
    later = {"LBM_FAKE_NOW": "2026-09-01T00:00:00Z"}
    refused(
        lbm("auth", "renew", "CA1-7", "--officer", "p110", "--statement", str(stmt),
            "--signature", str(sig), env=later),
        "applies to expiry 2026-06-10T09:30:00Z",
    )  # fmt: skip
    history = json.loads(lbm("auth", "history", "CA1-7", "--json").stdout)
    assert history[-1]["text"] == "two suspects identified"


def test_register_changes_need_a_register_signer(
    signed: tuple[Lbm, dict[str, Path]], tmp_path: Path
) -> None:
    lbm, keys = signed
    iso = tmp_path / "iso.key"
    signers = tmp_path / "register_signers"
    signers.write_text(f'iso@force namespaces="lbm-officer-register" {keygen(iso)}')
    config = lbm.data_dir / "lbm.toml"
    config.write_text(
        config.read_text().replace('register_signers = ""', f'register_signers = "{signers}"')
    )
    change = tmp_path / "change.toml"
    change.write_text(
        'action = "officer_add"\nprincipal = "p120"\nname = "Di Rector"\n'
        'role = "director_of_hr"\nrank = "staff"\nfrom = 2026-01-01T00:00:00Z\n'
    )
    unsigned = ["officer", "add", "p120", "--name", "Di Rector", "--role", "director_of_hr",
                "--rank", "staff"]  # fmt: skip
    refused(lbm(*unsigned), "register signer")
    # the audit officer signing with an officer's key (not a register signer): refused
    by_officer = sign(keys["p100"], change, "lbm-officer-register")
    refused(
        lbm("officer", "add", "p120", "--statement", str(change), "--signature", str(by_officer)),
        "not in the allowed signers",
    )
    sig = sign(iso, change, "lbm-officer-register")
    refused(
        lbm("officer", "add", "p120", "--rank", "superintendent", "--statement", str(change),
            "--signature", str(sig)),
        "--rank: 'superintendent' differs from the signed change",
    )  # fmt: skip
    ok = lbm("officer", "add", "p120", "--statement", str(change), "--signature", str(sig),
             "--json")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["role"] == "director_of_hr"
    entry = json.loads((lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["action"] == "officer_add" and entry["fields"]["signed"]["signer"] == "iso@force"
    # replaying the same signed change does not add a second period
    refused(
        lbm("officer", "add", "p120", "--statement", str(change), "--signature", str(sig)),
        "must start after the current one",
    )


def test_documented_examples_grant_and_renew_when_signed(
    signed: tuple[Lbm, dict[str, Path]], tmp_path: Path
) -> None:
    """docs/examples: the canonical application and the renewal statement, signed as the docs
    say, are accepted as they stand."""
    lbm, keys = signed
    conn = store_sqlite.connect(DataPaths(lbm.data_dir).registry)
    inv_table.add(conn, "alice", INV_RECIPIENT, "p900", "2026-01-01T00:00:00Z")
    conn.close()
    examples = Path(__file__).resolve().parents[2] / "docs" / "examples"
    app = tmp_path / "ca1-application.toml"
    app.write_bytes((examples / "ca1-application.toml").read_bytes())
    result = grant(lbm, app, sign(keys["p100"], app), when="2030-01-10T08:00:00Z")
    assert result.returncode == 0, result.stderr
    stmt = tmp_path / "renew-statement.toml"
    stmt.write_bytes((examples / "renew-statement.toml").read_bytes())
    renewed = lbm("auth", "renew", "CA1-2030-0042", "--officer", "p100", "--statement",
                  str(stmt), "--signature", str(sign(keys["p100"], stmt)), "--json",
                  env={"LBM_FAKE_NOW": "2030-03-20T09:00:00Z"})  # fmt: skip
    assert renewed.returncode == 0, renewed.stderr
    assert json.loads(renewed.stdout)["expiry"] == "2030-07-10T09:00:00Z"


def test_signed_application_cannot_be_kept_and_granted_later(
    signed: tuple[Lbm, dict[str, Path]], tmp_path: Path
) -> None:
    """A signed application names its start, and a start in the past is refused: an audit officer
    who kept an officer's signed application cannot grant it a week later."""
    lbm, keys = signed
    undated = application(tmp_path, "CA1-8", start=None)
    refused(grant(lbm, undated, sign(keys["p100"], undated)), "`start` is required")
    app = application(tmp_path, "CA1-9")
    refused(grant(lbm, app, sign(keys["p100"], app), when="2026-03-17T09:30:00Z"), "in the past")
    assert grant(lbm, app, app.with_name(app.name + ".sig")).returncode == 0


def test_investigator_register_changes_need_a_register_signer(
    signed: tuple[Lbm, dict[str, Path]], tmp_path: Path
) -> None:
    """The red-team finding: an audit officer who runs the gateway could register a second
    persona (own principal, login and key) and approve their own collateral removal with it.
    With signatures required, the investigator register takes only signed, unexpired, exact and
    unused change statements."""
    lbm, keys = signed
    iso = tmp_path / "iso.key"
    signers = tmp_path / "register_signers"
    signers.write_text(f'iso@force namespaces="lbm-investigator-register" {keygen(iso)}')
    config = lbm.data_dir / "lbm.toml"
    config.write_text(
        config.read_text().replace('register_signers = ""', f'register_signers = "{signers}"')
    )
    add = ["keys", "investigator", "add", "inv2", INV_RECIPIENT, "--principal", "p902",
           "--login", "persona"]  # fmt: skip
    refused(lbm(*add), "register signer")  # unsigned: refused
    change = tmp_path / "inv2.toml"
    change.write_text(
        f'action = "investigator_add"\nname = "inv2"\nprincipal = "p902"\n'
        f'recipient = "{INV_RECIPIENT}"\nlogin = "persona"\nnot_after = 2099-01-01T00:00:00Z\n'
    )
    # signed by an officer's key in the wrong namespace / not a register signer: refused
    by_officer = sign(keys["p100"], change, "lbm-investigator-register")
    refused(lbm(*add, "--statement", str(change), "--signature", str(by_officer)), "allowed")
    sig = sign(iso, change, "lbm-investigator-register")
    # the arguments must say what the statement says (here: another login)
    other = [*add[:-1], "colleague"]
    refused(lbm(*other, "--statement", str(change), "--signature", str(sig)), "login")
    ok = lbm(*add, "--statement", str(change), "--signature", str(sig))
    assert ok.returncode == 0, ok.stderr
    entry = json.loads((lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["action"] == "investigator_add"
    assert entry["fields"]["signed"]["signer"] == "iso@force"
    # removal needs its own statement; a replayed addition after removal is refused
    removal = tmp_path / "rm.toml"
    removal.write_text(
        'action = "investigator_remove"\nname = "inv2"\nnot_after = 2099-01-01T00:00:00Z\n'
    )
    refused(lbm("keys", "investigator", "remove", "inv2"), "register signer")
    rm_sig = sign(iso, removal, "lbm-investigator-register")
    done = lbm("keys", "investigator", "remove", "inv2", "--statement", str(removal),
               "--signature", str(rm_sig))  # fmt: skip
    assert done.returncode == 0, done.stderr
    refused(lbm(*add, "--statement", str(change), "--signature", str(sig)), "used already")
    # an expired statement is refused
    late = tmp_path / "late.toml"
    late.write_text(change.read_text().replace("2099-01-01", "2000-01-01").replace("inv2", "inv3"))
    late_sig = sign(iso, late, "lbm-investigator-register")
    refused(
        lbm("keys", "investigator", "add", "inv3", INV_RECIPIENT, "--principal", "p902",
            "--login", "persona", "--statement", str(late), "--signature", str(late_sig)),
        "expired",
    )  # fmt: skip
