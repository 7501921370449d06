"""Out-of-range and malformed input to the commands of identity, config, keys investigator add
and init is a clear error with exit status 1 or 2, never a traceback: hypothesis over the CLI's
arguments (year 9999 and year 0, huge integers, overlong strings, control characters), and
times without a time zone refused with "`Z` or an offset are required".

The property tests run `lbm`'s real entry point in-process (hundreds of examples would take
minutes as subprocesses): any exception that escapes it is a traceback. A few fixed cases then
go through the real CLI in a subprocess."""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lbm_testing import Lbm

from appliance.cli.main import main

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NO_TZ = "`Z` or an offset are required"


@contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def run_inprocess(*argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `lbm ARGV` run through `main()` in this process. An
    exception other than SystemExit propagates: that is the traceback a user would see."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["lbm", *argv]
    code: int
    try:
        with redirect_stdout(out), redirect_stderr(err), environment(LBM_CONFIG=""):
            os.environ.pop("LBM_CONFIG")
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def clean_exit(code: int, err: str) -> None:
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "data"
    Lbm(root)("init", check=True)
    return root


# -- strategies --------------------------------------------------------------------------------
argv_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=200,
)
special_text = st.sampled_from(
    [
        "",
        " ",
        "p1\n",
        "p1 ",
        "\tp1",
        "p1\r\n",
        "P1",
        "a" * 5000,
        "9" * 4300,
        "-1",
        "--json",
        "\u202ep1",
        "p1\u2028",
        "..",
        "../../etc/passwd",
    ]
)
text = st.one_of(argv_text, special_text)
offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
    ),
)
times = st.one_of(
    st.sampled_from(
        [
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+14:00",
            "0000-01-01T00:00:00Z",
            "10000-01-01T00:00:00Z",
            "2027-01-31T10:00",
            "2027-01-31",
            "2027-02-30T00:00:00Z",
            "2027-01-31T25:00:00Z",
            "1" * 400,
        ]
    ),
    st.datetimes().map(datetime.isoformat),  # no time zone
    st.datetimes(timezones=offsets).map(datetime.isoformat),
    text,
)
huge_int = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 65536, 10**6, 2**31, 2**63 - 1, -(2**63)]),
)


# -- identity ----------------------------------------------------------------------------------
@SETTINGS
@given(ip=st.one_of(text, st.ip_addresses().map(str)), at=times)
def test_identity_resolve_ip_at(data_dir: Path, ip: str, at: str) -> None:
    code, _out, err = run_inprocess("--data-dir", str(data_dir), "identity", "resolve",
                                    "--ip", ip, "--at", at)  # fmt: skip
    clean_exit(code, err)


@SETTINGS
@given(option=st.sampled_from(["--email", "--username"]), value=text)
def test_identity_resolve_email_username(data_dir: Path, option: str, value: str) -> None:
    code, _out, err = run_inprocess("--data-dir", str(data_dir), "identity", "resolve",
                                    option, value)  # fmt: skip
    clean_exit(code, err)


@SETTINGS
@given(principal=text)
def test_identity_show(data_dir: Path, principal: str) -> None:
    code, _out, err = run_inprocess("--data-dir", str(data_dir), "identity", "show", principal)
    clean_exit(code, err)


@SETTINGS
@given(value=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
def test_a_time_without_a_zone_is_refused_with_the_reason(data_dir: Path, value: datetime) -> None:
    code, _out, err = run_inprocess("--data-dir", str(data_dir), "identity", "resolve",
                                    "--ip", "10.0.0.1", "--at", value.isoformat())  # fmt: skip
    assert code == 2 and NO_TZ in err, err
    aware = value.replace(tzinfo=UTC).isoformat()
    code, _out, err = run_inprocess("--data-dir", str(data_dir), "identity", "resolve",
                                    "--ip", "10.0.0.1", "--at", aware)  # fmt: skip
    assert code == 1 and NO_TZ not in err, err  # resolves to nobody: exit 1


# -- config ------------------------------------------------------------------------------------
INT_KEYS = [
    ("web", "listen_port"),
    ("smtp", "listen_port"),
    ("capture", "max_flows"),
    ("retention", "default_days"),
    ("retention", "review_days"),
    ("policy", "renewal_window_days"),
    ("housekeeping", "interval_seconds"),
]
STR_KEYS = [
    ("gateway", "id"),
    ("web", "listen_host"),
    ("identity", "feed"),
    ("notice", "text"),
    ("policy", "register_signers"),
]


def toml_string(value: str) -> str:
    escaped = "".join(
        ch if ch.isprintable() and ch not in '"\\' else f"\\U{ord(ch):08x}" for ch in value
    )
    return f'"{escaped}"'


@SETTINGS
@given(key=st.sampled_from(INT_KEYS), value=huge_int)
def test_config_check_integers(data_dir: Path, key: tuple[str, str], value: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.toml"
        cfg.write_text(f"[{key[0]}]\n{key[1]} = {value}\n")
        code, _out, err = run_inprocess("--data-dir", str(data_dir), "config", "check", str(cfg))
    clean_exit(code, err)
    if value < 0 or value > 10**9:
        assert code == 2 and f"[{key[0]}] {key[1]}: must be" in err, err


@SETTINGS
@given(key=st.sampled_from(STR_KEYS), value=text)
def test_config_check_strings(data_dir: Path, key: tuple[str, str], value: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.toml"
        cfg.write_text(f"[{key[0]}]\n{key[1]} = {toml_string(value)}\n")
        code, _out, err = run_inprocess("--data-dir", str(data_dir), "config", "check", str(cfg))
    clean_exit(code, err)
    if len(value) > 4096:
        assert code == 2 and "longer than 4096" in err, err
    assert len(err) < 2000, "an error message must not echo an overlong value"


@SETTINGS
@given(item=st.one_of(text, st.sampled_from(["age1" + "q" * 58, "age1" + "z" * 58])))
def test_config_check_custodians(data_dir: Path, item: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.toml"
        cfg.write_text(f"[keys]\ncustodians = [{toml_string(item)}]\n")
        code, _out, err = run_inprocess("--data-dir", str(data_dir), "config", "check", str(cfg))
    clean_exit(code, err)
    assert code == 2, err


# -- keys investigator add, init --gateway-id ------------------------------------------------
@SETTINGS
@given(name=text, key=text, principal=text)
def test_keys_investigator_add(data_dir: Path, name: str, key: str, principal: str) -> None:
    code, _out, err = run_inprocess("--data-dir", str(data_dir), "keys", "investigator", "add",
                                    name, key, "--principal", principal)  # fmt: skip
    clean_exit(code, err)
    assert code != 0  # none of these is a valid age recipient


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gateway_id=text)
def test_init_gateway_id(gateway_id: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        code, _out, err = run_inprocess("--data-dir", str(Path(tmp) / "d"), "init",
                                        "--gateway-id", gateway_id)  # fmt: skip
    clean_exit(code, err)
    assert len(err) < 2000


# -- the real CLI, a few fixed cases -----------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("identity", "resolve", "--ip", "10.0.0.1", "--at", "2027-01-31T10:00"), NO_TZ),
        (("identity", "resolve", "--ip", "10.0.0.1", "--at", "0000-01-01T00:00:00Z"),
         "not an ISO 8601 date-time"),
        (("identity", "resolve", "--ip", "10.0.0.1", "--at", "0001-01-01T00:00:00+01:00"),
         "out of range"),
        (("audit", "show", "--since", "2027-01-31T10:00"), NO_TZ),
        (("init", "--gateway-id", "g" * 65), "at most 64 characters"),
    ],
)  # fmt: skip
def test_real_cli_refuses_with_one_clear_line(
    data_dir: Path, args: tuple[str, ...], message: str
) -> None:
    result = Lbm(data_dir)(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_year_9999_resolves_to_nobody_without_a_traceback(data_dir: Path) -> None:
    result = Lbm(data_dir)("identity", "resolve", "--ip", "10.0.0.1", "--at",
                           "9999-12-31T23:59:59Z")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.strip() == "nobody"


def test_a_bad_fake_now_is_one_clear_line(tmp_path: Path) -> None:
    lbm = Lbm(tmp_path / "d")
    lbm("init", check=True)
    cfg = lbm.data_dir / "lbm.toml"
    cfg.write_text(cfg.read_text().replace("fake_clock = false", "fake_clock = true"))
    for value, message in (("2027-01-31T10:00", NO_TZ), ("soon", "not an ISO 8601 date-time")):
        result = lbm("status", env={"LBM_FAKE_NOW": value})
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "LBM_FAKE_NOW: " in result.stderr and message in result.stderr
