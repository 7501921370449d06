"""Red-team plays against who may act on a reference (search, bundle, export, collateral).

The registry matches references without case (`ref ... COLLATE NOCASE`), so `--ref auth-rt-9`
found AUTH-RT-9: a custodian's search was then audited under a reference that a scrutiny query
for AUTH-RT-9 does not find, its scope filtered `refs`/`record_ids` with the wrong spelling, and
the pseudonym key table made a second key for it. A reference must be given exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lbm_testing import Lbm

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
