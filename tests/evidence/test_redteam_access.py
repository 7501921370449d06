"""Red-team plays against who may act on a reference (search, bundle, export, collateral).

The registry matches references without case (`ref ... COLLATE NOCASE`), so `--ref auth-rt-9`
found AUTH-RT-9: a custodian's search was then audited under a reference that a scrutiny query
for AUTH-RT-9 does not find, its scope filtered `refs`/`record_ids` with the wrong spelling, and
the pseudonym key table made a second key for it. A reference must be given exactly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from lbm_testing import REPO, Lbm

from appliance.evidence.access import AccessRefused, check_access
from appliance.evidence.search import Query, SearchRefused, authorise
from store import agefile as age

REF = "AUTH-RT-9"
SUBJECT = "p12345"
RECIPIENT = age.generate()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lbm = Lbm(tmp_path_factory.mktemp("redteam-access") / "data")
    lbm("init", check=True)
    lbm("keys", "investigator", "add", "cust1", RECIPIENT, "--principal", "p900",
        "--login", "root", check=True)  # fmt: skip
    lbm.grant(REF, SUBJECT, investigator="cust1")
    return lbm.data_dir / "registry.sqlite"


@pytest.mark.parametrize(
    "spelling",
    [REF.lower(), "Auth-Rt-9", REF + "\n", " " + REF, REF.replace("-", "\u2010"), "AUTH-RT-９"],
)
def test_a_reference_must_be_given_exactly(registry: Path, spelling: str) -> None:
    with pytest.raises(AccessRefused, match="no such authorisation"):
        check_access(registry, "root", spelling, [RECIPIENT])  # as a custodian
    query = Query(stream="web", principal=SUBJECT, ref=spelling, reason="r")
    with pytest.raises(SearchRefused, match="no such authorisation") as info:
        authorise(query, registry, "root", [RECIPIENT])
    assert info.value.code == 1


def test_the_exact_reference_is_allowed(registry: Path) -> None:
    assert check_access(registry, "root", REF, [RECIPIENT]).name == "cust1"
    acting, scope = authorise(
        Query(stream="web", principal=SUBJECT, ref=REF, reason="r"), registry, "root", []
    )
    assert acting is not None and acting.basis == "assigned"
    assert scope is not None and scope.ref == REF and scope.subject == SUBJECT


SERVICE = 65534  # the gateway's service user here: nobody
INVESTIGATOR = 1234  # a login user allowed to run lbm as the service user (sudo -u lbm lbm ...)


def _as_service(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", f"--reuid={SERVICE}", f"--regid={SERVICE}", "--clear-groups",
           sys.executable, "-m", "appliance.cli.main", "--data-dir", str(data), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)


def _chown_tree(path: Path, uid: int) -> None:
    for p in [path, *path.rglob("*")]:
        os.lchown(p, uid, uid)


def test_a_config_or_data_dir_someone_else_controls_is_refused(registry: Path) -> None:
    """`sudo -u lbm lbm --config MINE.toml search ...`: MINE.toml names the caller's key a
    custodian ([keys] custodians), so check_access would let them search under any REF; or
    `--data-dir MINE` brings a registry where they are assigned to a REF on a colleague."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run lbm as another user")
    top = Path(tempfile.mkdtemp(prefix="lbm-redteam-"))
    try:
        top.chmod(0o755)
        gw = top / "gw"
        shutil.copytree(registry.parent, gw)
        _chown_tree(gw, SERVICE)  # as `lbm init --system --user lbm` leaves it
        evil = top / "mine.toml"
        text = (gw / "lbm.toml").read_text()
        evil.write_text(text.replace("custodians = []", f'custodians = ["{RECIPIENT}"]', 1))
        argv = ("--config", str(evil), "search", "--stream", "web", "--count-by", "host")
        os.chown(evil, INVESTIGATOR, INVESTIGATOR)
        refused = _as_service(gw, *argv)
        assert refused.returncode == 2, refused.stderr
        assert f"configuration file is owned by uid {INVESTIGATOR}" in refused.stderr
        os.chown(evil, SERVICE, SERVICE)
        evil.chmod(0o664)  # the service user's, but a group may write it
        refused = _as_service(gw, *argv)
        assert refused.returncode == 2 and "writable by group or others" in refused.stderr
        evil.chmod(0o600)
        allowed = _as_service(gw, *argv)
        assert allowed.returncode == 0, allowed.stderr
        _chown_tree(gw, INVESTIGATOR)  # a data directory of the caller's making
        refused = _as_service(gw, "search", "--stream", "web", "--count-by", "host")
        assert refused.returncode == 2 and "the data directory is owned by" in refused.stderr
    finally:
        shutil.rmtree(top)
