"""`lbm gateway rules`: the table `inet lbm` loads into a real kernel (a network namespace the
test makes), replaces itself atomically, and its removal restores the ruleset byte for byte,
next to someone else's table; bad configuration is refused naming the key; apply and remove are
audited without any subject's address."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from capture_policy import set_config
from lbm_testing import REPO, Lbm, Result

from appliance.cli import gateway_rules
from appliance.cli.gateway_rules import RulesError, RuleSpec

pytestmark = pytest.mark.skipif(shutil.which("nft") is None, reason="nft not installed")

FOREIGN = """table ip site_firewall {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 22 accept
\t}
}
"""


def configure(data_dir: Path, *, mode: str = "transparent", host: str = "0.0.0.0") -> None:
    set_config(data_dir, "web", "mode", f'"{mode}"')
    set_config(data_dir, "web", "listen_host", f'"{host}"')
    set_config(data_dir, "web", "listen_port", "8080")
    set_config(data_dir, "gateway", "inside_interface", '"lan0"')
    set_config(data_dir, "gateway", "inside_networks", '["10.20.0.0/16", "2001:db8:20::/48"]')


@pytest.fixture(scope="module")
def lbm(tmp_path_factory: pytest.TempPathFactory, lbm_inproc: Callable[..., object]) -> Lbm:
    runner = Lbm(tmp_path_factory.mktemp("rules") / "data")
    lbm_inproc(runner.data_dir, "init")
    configure(runner.data_dir)
    return runner


@pytest.fixture(scope="module")
def netns() -> Iterator[list[str]]:
    name = f"lbmrules{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def ruleset(ns: list[str]) -> str:
    return subprocess.run([*ns, "nft", "list", "ruleset"], check=True, capture_output=True,
                          text=True).stdout  # fmt: skip


def audit_entries(lbm: Lbm, action: str) -> list[dict[str, object]]:
    lines = (lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("action") == action]


def in_ns(ns: list[str], lbm: Lbm, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `lbm` inside the test's namespace (nft acts on that namespace's ruleset)."""
    argv = [*ns, sys.executable, "-m", "appliance.cli.main", "--data-dir", str(lbm.data_dir)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, cwd=REPO)


def test_apply_replaces_and_remove_restores_the_previous_ruleset(
    lbm: Lbm, netns: list[str]
) -> None:
    subprocess.run([*netns, "nft", "-f", "-"], input=FOREIGN, text=True, check=True)
    before = ruleset(netns)
    assert "site_firewall" in before
    for _ in range(2):  # a second apply replaces the table: still exactly one
        applied = in_ns(netns, lbm, "gateway", "rules", "--apply", "--json")
        assert applied.returncode == 0, applied.stderr
        assert json.loads(applied.stdout)["applied"] is True
    loaded = ruleset(netns)
    assert loaded.count("table inet lbm") == 1 and "site_firewall" in loaded
    assert 'iifname "lan0" ip saddr 10.20.0.0/16 tcp dport { 80, 443 } redirect to :8080' in loaded
    assert 'iifname "lan0" ip6 saddr 2001:db8:20::/48 tcp dport { 80, 443 } redirect to :8080' in (
        loaded
    )
    assert 'iifname "lan0" ip saddr 10.20.0.0/16 udp dport 443 drop' in loaded
    assert "dport 25" not in loaded and "smtp" not in loaded  # SMTP is left to the relay's route
    removed = in_ns(netns, lbm, "gateway", "rules", "--remove")
    assert removed.returncode == 0, removed.stderr
    assert ruleset(netns) == before
    applies = audit_entries(lbm, "gateway_rules_apply")
    fields = applies[0]["fields"]
    assert len(applies) == 2 and isinstance(fields, dict) and fields["interface"] == "lan0"
    assert fields["port"] == 8080 and fields["scope"] == "all"
    assert len(audit_entries(lbm, "gateway_rules_remove")) == 1


def cli(lbm: Lbm, *args: str) -> Result:
    """`lbm` in this process (the cheap path for edge cases)."""
    from click.testing import CliRunner

    from appliance.cli.main import _register, cli

    _register()
    out = CliRunner().invoke(cli, ["--data-dir", str(lbm.data_dir), *args])
    return Result(out.exit_code, out.stdout, out.stderr)


def test_printing_changes_nothing_and_is_not_audited(lbm: Lbm) -> None:
    before = len(audit_entries(lbm, "gateway_rules_apply"))
    shown = cli(lbm, "gateway", "rules")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("table inet lbm {")
    assert "redirect to :8080" in shown.stdout and "@subjects4" not in shown.stdout
    assert len(audit_entries(lbm, "gateway_rules_apply")) == before
    set_config(lbm.data_dir, "web", "transparent_scope", '"subjects"')
    try:
        subjects = cli(lbm, "gateway", "rules")
    finally:
        set_config(lbm.data_dir, "web", "transparent_scope", '"all"')
    assert "ip saddr @subjects4 tcp dport { 80, 443 } redirect to :8080" in subjects.stdout
    assert "does not include lan0" in subjects.stderr  # no capture: bypassed traffic unrecorded


def test_bad_configuration_is_refused_naming_the_key(lbm: Lbm) -> None:
    configure(lbm.data_dir, mode="explicit")
    result = cli(lbm, "gateway", "rules", "--apply")
    assert result.returncode == 2 and "[web] mode is 'explicit'" in result.stderr
    configure(lbm.data_dir, host="127.0.0.1")
    result = cli(lbm, "gateway", "rules")
    assert result.returncode == 2 and "listen_host 127.0.0.1 is loopback" in result.stderr
    both = cli(lbm, "gateway", "rules", "--apply", "--remove")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    configure(lbm.data_dir)


def test_values_that_would_inject_nft_syntax_are_refused() -> None:
    nets = ("10.0.0.0/8",)
    with pytest.raises(RulesError, match="inside_interface"):
        RuleSpec(interface='lan0" accept; #', networks=nets, port=8080)
    with pytest.raises(RulesError, match="not an IP network"):
        RuleSpec(interface="lan0", networks=("10.0.0.0/8 } accept {",), port=8080)
    with pytest.raises(RulesError, match="inside_networks is empty"):
        RuleSpec(interface="lan0", networks=(), port=8080)
    with pytest.raises(ValueError):
        gateway_rules.elements_script(["10.0.0.1 } ; flush ruleset ; {"])
    script = gateway_rules.elements_script(["10.0.0.2", "2001:DB8::1", "10.0.0.2"])
    assert "add element inet lbm subjects4 { 10.0.0.2 }" in script
    assert "add element inet lbm subjects6 { 2001:db8::1 }" in script
