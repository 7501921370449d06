"""`Identity` (addons/identity.py) in a real mitmproxy with real curl clients: proxy
authentication against the users file (407 challenge, wrong and unknown users, CONNECT tunnels,
plain HTTP), the username resolved through the identity map, an unresolved user kept as
`proxy_user` with no principal, the principal by client IP without authentication, and the
password kept nowhere (not forwarded upstream, not in flow metadata, not in any log)."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from inproc_proxy import echo_upstream, running_proxy
from lbm_testing import Lbm
from mitmproxy import connection, http

from addons.identity import Identity, parse_basic
from addons.state import conn_state
from appliance.policy.snapshot import SnapshotSource
from appliance.policy.users import UserEntry, UsersSource, hash_password, update_users_file
from store.clock import Clock
from store.paths import DataPaths

PASSWORD = "Tr0ub4dor&3-canary-pw-5f1c"  # a canary: must appear in no log, header or metadata
OTHER_PASSWORD = "correct horse:battery staple"  # with a colon: split on the first one only


class Recorder:
    """Runs after Identity; records what later addons (Decision, Archiver) would see."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def _record(self, hook: str, flow: http.HTTPFlow) -> None:
        state = conn_state(flow.client_conn)
        self.seen.append(
            {
                "hook": hook,
                "principal": state.principal,
                "proxy_user": state.proxy_user,
                "identified": state.identified,
                "auth_header": "Proxy-Authorization" in flow.request.headers,
                "metadata": repr(flow.metadata),
                "answered": flow.response is not None,
            }
        )

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._record("connect", flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._record("request", flow)

    def client_connected(self, client: connection.Client) -> None:
        state = conn_state(client)
        self.seen.append({"hook": "connected", "principal": state.principal})


@pytest.fixture
def env(lbm: Lbm, tmp_path: Path) -> dict[str, Any]:
    feed = tmp_path / "feed.csv"
    feed.write_text(
        "principal,kind,value,valid_from,valid_to\n"
        "p12345,username,jsmith,,\n"
        "p67890,username,adoe,,\n"
        "p12345,ip,127.0.0.1,2000-01-01T00:00:00Z,\n"
    )
    lbm("identity", "import", str(feed), check=True)
    users_file = tmp_path / "users"
    for name, password in (("jsmith", PASSWORD), ("adoe", OTHER_PASSWORD), ("ghost", "gh-pw")):
        entry = UserEntry(name, hash_password(password, rounds=4))
        update_users_file(users_file, lambda u, e=entry: u.with_user(e))
    source = SnapshotSource(DataPaths(lbm.data_dir))
    return {"source": source, "users_file": users_file, "confdir": tmp_path / "mitm"}


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_auth_mode_challenges_verifies_and_hides_the_password(
    env: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    users = UsersSource(env["users_file"], interval=0.0)
    identity = Identity(env["source"].current, Clock(), "explicit", users=users.current, auth=True)
    recorder = Recorder()
    with (
        echo_upstream() as (port, upstream_seen),
        running_proxy([identity, recorder], env["confdir"]) as proxy,
    ):
        target = f"http://127.0.0.1:{port}/x"
        # no credentials: 407 with a Basic challenge, nothing upstream
        out = subprocess.run(
            ["curl", "-sS", "-i", "--max-time", "20", "-x", proxy.url, target],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout.startswith("HTTP/1.1 407")
        assert 'proxy-authenticate: basic realm="lbm-gateway"' in out.stdout.lower()
        # wrong password, unknown user, a non-Basic scheme: 407
        assert curl("-x", proxy.url, "-U", "jsmith:wrong", target).stdout == "407"
        assert curl("-x", proxy.url, "-U", f"nobody:{PASSWORD}", target).stdout == "407"
        assert (
            curl("-x", proxy.url, "-H", "Proxy-Authorization: Bearer abc", target).stdout == "407"
        )
        assert upstream_seen == []
        # right credentials, plain HTTP: through, identified as the mapped principal
        assert curl("-x", proxy.url, "-U", f"jsmith:{PASSWORD}", target).stdout == "200"
        assert curl("-x", proxy.url, "-U", f"adoe:{OTHER_PASSWORD}", target).stdout == "200"
        # a user of the file the identity map does not know: through, but never a subject
        assert curl("-x", proxy.url, "-U", "ghost:gh-pw", target).stdout == "200"
        # CONNECT tunnel (curl -p): authenticated at CONNECT; inner requests need no header
        assert curl("-p", "-x", proxy.url, "-U", f"jsmith:{PASSWORD}", target).stdout == "200"
        tunnel_refused = curl("-p", "-x", proxy.url, target)
        assert tunnel_refused.returncode != 0 or tunnel_refused.stdout in ("407", "000")
    requests = [r for r in recorder.seen if r["hook"] == "request" and not r["answered"]]
    assert [(r["principal"], r["proxy_user"]) for r in requests] == [
        ("p12345", "jsmith"),
        ("p67890", "adoe"),
        (None, "ghost"),
        ("p12345", "jsmith"),
    ]
    assert all(r["identified"] for r in requests)
    connects = [r for r in recorder.seen if r["hook"] == "connect" and not r["answered"]]
    assert [(r["principal"], r["proxy_user"]) for r in connects] == [("p12345", "jsmith")]
    # the header reaches no later addon and not the upstream; the password is nowhere
    assert not any(r.get("auth_header") for r in recorder.seen)
    assert len(upstream_seen) == 4
    assert all(
        "proxy-authorization" not in {k.lower() for k in seen["headers"]} for seen in upstream_seen
    )
    assert not any(PASSWORD in r.get("metadata", "") for r in recorder.seen)
    assert not any("proxyauth" in r.get("metadata", "") for r in recorder.seen)
    assert PASSWORD not in caplog.text and OTHER_PASSWORD not in caplog.text
    assert identity.counts.auth_failed == 2 and identity.counts.unresolved == 1


def test_auth_mode_sees_users_file_changes(env: dict[str, Any]) -> None:
    users = UsersSource(env["users_file"], interval=0.0)
    identity = Identity(env["source"].current, Clock(), "explicit", users=users.current, auth=True)
    with echo_upstream() as (port, _), running_proxy([identity], env["confdir"]) as proxy:
        target = f"http://127.0.0.1:{port}/"
        assert curl("-x", proxy.url, "-U", "newbie:n-pw", target).stdout == "407"
        entry = UserEntry("newbie", hash_password("n-pw", rounds=4))
        update_users_file(env["users_file"], lambda u: u.with_user(entry))
        assert curl("-x", proxy.url, "-U", "newbie:n-pw", target).stdout == "200"
        update_users_file(env["users_file"], lambda u: u.without_user("jsmith"))
        # a removed user is refused at once (the cache went with the old file)
        assert curl("-x", proxy.url, "-U", f"jsmith:{PASSWORD}", target).stdout == "407"
        # a broken file keeps the last good one in force
        good = env["users_file"].read_text()
        env["users_file"].write_text(good + "not a valid line\n")
        assert curl("-x", proxy.url, "-U", "newbie:n-pw", target).stdout == "200"
        assert users.last_error is not None and str(env["users_file"]) in users.last_error
        # no users file at all: everyone is refused
        env["users_file"].unlink()
        assert curl("-x", proxy.url, "-U", "newbie:n-pw", target).stdout == "407"


def test_ip_mode_resolves_the_client_address(env: dict[str, Any]) -> None:
    identity = Identity(env["source"].current, Clock(), "explicit")
    recorder = Recorder()
    with (
        echo_upstream() as (port, upstream_seen),
        running_proxy([identity, recorder], env["confdir"]) as proxy,
    ):
        target = f"http://127.0.0.1:{port}/"
        # leased 127.0.0.1 -> p12345; a Proxy-Authorization sent anyway is not forwarded
        assert curl("-x", proxy.url, "-U", f"jsmith:{PASSWORD}", target).stdout == "200"
        # 127.0.0.2 holds no lease: no principal, never a subject
        assert curl("--interface", "127.0.0.2", "-x", proxy.url, target).stdout == "200"
        assert curl("-p", "-x", proxy.url, target).stdout == "200"
    connected = [r["principal"] for r in recorder.seen if r["hook"] == "connected"]
    assert connected == ["p12345", None, "p12345"]
    requests = [(r["principal"], r["proxy_user"]) for r in recorder.seen if r["hook"] == "request"]
    assert requests == [("p12345", None), (None, None), ("p12345", None)]
    assert all(
        "proxy-authorization" not in {k.lower() for k in seen["headers"]} for seen in upstream_seen
    )


def test_lease_ending_on_a_keepalive_connection_is_seen_per_request(
    env: dict[str, Any], lbm: Lbm, tmp_path: Path
) -> None:
    """A request's principal is the lease holder at that request's start."""
    clock = Clock(fixed=None)
    identity = Identity(env["source"].current, clock, "explicit")
    recorder = Recorder()
    feed = tmp_path / "feed2.csv"
    with echo_upstream() as (port, _), running_proxy([identity, recorder], env["confdir"]) as proxy:
        target = f"http://127.0.0.1:{port}/"
        assert curl("-x", proxy.url, target).stdout == "200"
        feed.write_text("principal,kind,value,valid_from,valid_to\np12345,username,jsmith,,\n")
        lbm("identity", "import", str(feed), check=True)
        deadline = time.monotonic() + 5
        while env["source"].current().resolve(ip="127.0.0.1", at=clock.now()) is not None:
            assert time.monotonic() < deadline, "snapshot did not reload"
            time.sleep(0.05)
        assert curl("-x", proxy.url, target).stdout == "200"
    requests = [r["principal"] for r in recorder.seen if r["hook"] == "request"]
    assert requests == ["p12345", None]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("Basic YWxpY2U6cHc=", ("alice", "pw"), id="plain"),
        pytest.param("basic   YWxpY2U6YTpiOmM=", ("alice", "a:b:c"), id="colons-in-password"),
        pytest.param("Basic YWxpY2U6", ("alice", ""), id="empty-password"),
        pytest.param("Basic OnB3", None, id="empty-user"),
        pytest.param("Basic YWxpY2U=", None, id="no-colon"),
        pytest.param("Basic !!!", None, id="not-base64"),
        pytest.param("Basic /w==", None, id="not-utf8"),
        pytest.param("Bearer YWxpY2U6cHc=", None, id="other-scheme"),
        pytest.param("Basic", None, id="no-credentials"),
    ],
)
def test_parse_basic(value: str, expected: tuple[str, str] | None) -> None:
    assert parse_basic(value) == expected


def test_transparent_mode_refuses_authentication(tmp_path: Path) -> None:
    users = UsersSource(tmp_path / "users")

    def no_snapshot() -> Any:
        raise AssertionError("not consulted")

    with pytest.raises(ValueError, match="explicit mode"):
        Identity(no_snapshot, Clock(), "transparent", users=users.current, auth=True)
    with pytest.raises(ValueError, match="needs the users file"):
        Identity(no_snapshot, Clock(), "explicit", auth=True)
    with pytest.raises(ValueError, match="unknown web mode"):
        Identity(no_snapshot, Clock(), "socks")


# -- through `lbm proxy run` ([web] auth = true), with users made by `lbm users add` -----------


def test_daemon_auth_subject_archived_without_password(
    start_proxy: Any, upstream: Any, web_lbm: Lbm, tmp_path: Path
) -> None:
    from web_proxy import OTHER, REF, SUBJECT, investigator, proxy_ca, records, set_option

    fast = {"LBM_BCRYPT_ROUNDS": "4"}
    set_option(web_lbm.data_dir, "web", "auth", "true")
    for name, password in (("jsmith", PASSWORD), ("adoe", OTHER_PASSWORD)):
        web_lbm("users", "add", name, "--password-stdin", input=password + "\n", env=fast,
                check=True)  # fmt: skip
    feed = tmp_path / "names.csv"
    feed.write_text(
        "principal,kind,value,valid_from,valid_to\n"
        f"{SUBJECT},username,jsmith,,\n{OTHER},username,adoe,,\n"
    )
    web_lbm("identity", "import", str(feed), check=True)
    inv = investigator(web_lbm)
    web_lbm.grant(REF, SUBJECT)
    daemon = start_proxy()
    ca = proxy_ca(web_lbm.data_dir)
    base = ["curl", "-sS", "--max-time", "20", "--proxy", daemon.proxy, "-o", "/dev/null",
            "-w", "%{http_code}"]  # fmt: skip

    def run(*args: str) -> str:
        out = subprocess.run([*base, *args], capture_output=True, text=True, timeout=40)
        return out.stdout

    https_url = upstream.url("/echo?who=me")
    # no or wrong credentials: 407 for CONNECT, plain GET and plain POST (body, answered early)
    assert run("--cacert", str(ca), https_url) in ("407", "000")
    assert run(upstream.url("/bytes/10", tls=False)) == "407"
    assert run("-d", "x=1", upstream.url("/echo", tls=False)) == "407"
    assert run("-U", "jsmith:nope", upstream.url("/bytes/10", tls=False)) == "407"
    # the subject, authenticated: intercepted (our CA), archived
    assert run("-U", f"jsmith:{PASSWORD}", "--cacert", str(ca), https_url) == "200"
    assert run("-U", f"jsmith:{PASSWORD}", upstream.url("/bytes/10", tls=False)) == "200"
    # the non-subject: passed through, verified against the upstream's own CA
    other = run("-U", f"adoe:{OTHER_PASSWORD}", "--cacert", str(upstream.ca_file), https_url)
    assert other == "200"
    code, out, err = daemon.stop()
    assert code == 0, err
    rows = daemon.rows()
    ok = [r for r in rows if r["status"] == 200 or r["decision"] == "passed"]
    by_user = {(r["proxy_user"], r["principal"], r["decision"]) for r in ok}
    assert ("jsmith", SUBJECT, "intercepted") in by_user
    assert ("adoe", OTHER, "passed") in by_user
    refused = [r for r in rows if r["status"] == 407]
    assert len(refused) >= 3 and all(r["proxy_user"] is None for r in refused)
    assert all(r["refs"] == [] for r in refused)
    recs = records(web_lbm.data_dir, inv)
    assert recs, "the subject's session was not archived"
    archived = b"".join(bytes(r.data) for r in recs)
    assert b"/echo?who=me" in archived  # the subject's request is there...
    assert PASSWORD.encode() not in archived  # ...but not their proxy password
    assert b"proxy-authorization" not in archived.lower()
    # the password is in no file of the data dir and no output of the daemon
    for path in web_lbm.data_dir.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            assert PASSWORD.encode() not in raw, path
            assert OTHER_PASSWORD.encode() not in raw, path
    assert PASSWORD not in out + err and OTHER_PASSWORD not in out + err


def test_password_guessing_is_throttled_per_client(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After FAILURE_LIMIT wrong passwords from one address, that address gets 407 without a
    bcrypt check (even with the right password) until the window passes; other addresses and
    pairs verified recently are unaffected."""
    import bcrypt

    from appliance.policy import users as users_mod

    users = UsersSource(env["users_file"], interval=0.0)
    identity = Identity(env["source"].current, Clock(), "explicit", users=users.current, auth=True)
    identity.throttle.limit, identity.throttle.window = 3, 2.0
    checks: list[int] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(users_mod.bcrypt, "checkpw", lambda p, h: checks.append(1) or real(p, h))
    with echo_upstream() as (port, _), running_proxy([identity], env["confdir"]) as proxy:
        target = f"http://127.0.0.1:{port}/"
        for _ in range(3):
            assert curl("-x", proxy.url, "-U", "adoe:guess", target).stdout == "407"
        assert len(checks) == 3
        # blocked now: the right password is refused too, without bcrypt
        assert curl("-x", proxy.url, "-U", f"adoe:{OTHER_PASSWORD}", target).stdout == "407"
        assert len(checks) == 3 and identity.counts.throttled == 1
        # another address is not blocked
        good = curl("--interface", "127.0.0.2", "-x", proxy.url, "-U", f"adoe:{OTHER_PASSWORD}",
                    target)  # fmt: skip
        assert good.stdout == "200"
        # a pair verified recently still passes from the blocked address (no guessing involved)
        assert curl("-x", proxy.url, "-U", f"adoe:{OTHER_PASSWORD}", target).stdout == "200"
        time.sleep(2.1)  # the window passes
        assert curl("-x", proxy.url, "-U", f"jsmith:{PASSWORD}", target).stdout == "200"
