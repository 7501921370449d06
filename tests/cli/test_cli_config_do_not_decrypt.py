"""`[do_not_decrypt] categories`: CATEGORY:GLOB items, checked with a clear error; the shipped
defaults pass and their globs join the flat hosts list."""

from __future__ import annotations

from pathlib import Path

from lbm_testing import Lbm

from appliance.config.do_not_decrypt import DO_NOT_DECRYPT_CATEGORIES, do_not_decrypt_globs


def test_a_malformed_category_is_one_clear_error(lbm: Lbm, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[do_not_decrypt]\ncategories = ["health *.nhs.uk"]\n')
    result = lbm("config", "check", str(bad))
    assert result.returncode == 2
    assert "[do_not_decrypt] categories" in result.stderr
    assert "'health *.nhs.uk' is not CATEGORY:GLOB" in result.stderr


def test_defaults_cover_each_category_and_join_the_hosts_list(lbm: Lbm, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[do_not_decrypt]\ncategories = ["welfare:*.example.org"]\n')
    assert lbm("config", "check", str(good)).returncode == 0
    categories = {item.partition(":")[0] for item in DO_NOT_DECRYPT_CATEGORIES}
    assert categories == {"health", "banking", "legal_advice", "trade_union", "welfare"}
    assert do_not_decrypt_globs(["a.example"], ["welfare:*.b.example"]) == [
        "a.example",
        "*.b.example",
    ]
