"""The Decision addon's hooks on mitmproxy test flows against a real registry snapshot (a grant
made with the real CLI), and its pure helpers: authority parsing, the pinned-client memory, the
log filter's fixed texts, error codes and Community ID."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from lbm_testing import Lbm
from mitmproxy import http
from mitmproxy.test import tflow

from addons import logfilter
from addons.decision import MISDIRECTED, Decision, _host_of
from addons.pinned import PinnedClients
from addons.rows import community_id, error_code
from addons.state import conn_state, flow_state, forget
from appliance.policy.snapshot import SnapshotSource
from store.clock import Clock
from store.paths import DataPaths

SUBJECT, OTHER, REF = "p12345", "p67890", "op-dec-1"


@pytest.fixture
def source(lbm: Lbm) -> Iterator[SnapshotSource]:
    lbm("keys", "investigator", "add", "inv1",
        "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p", "--principal", "p900",
        check=True)  # fmt: skip
    lbm.grant(REF, SUBJECT)
    src = SnapshotSource(DataPaths(lbm.data_dir), do_not_decrypt=["*.nhs.uk"])
    src.refresh(force=True)
    yield src
    src.stop()


def _flow(principal: str | None, authority: str, tls: bool = True) -> http.HTTPFlow:
    f = tflow.tflow()
    f.client_conn.tls = tls
    f.request.host = authority
    f.request.headers["Host"] = authority
    state = conn_state(f.client_conn)
    state.principal = principal
    return f


def test_subject_request_on_an_intercepted_connection_gets_the_refs(
    source: SnapshotSource,
) -> None:
    d = Decision(source.current, Clock())
    f = _flow(SUBJECT, "www.example.test")
    state = conn_state(f.client_conn)
    state.decision, state.refs = "intercepted", (REF,)
    d.requestheaders(f)
    fs = flow_state(f)
    assert fs is not None and fs.refs == (REF,) and f.response is None
    forget(f.client_conn)


def test_do_not_decrypt_authority_on_an_intercepted_connection_gets_421(
    source: SnapshotSource,
) -> None:
    d = Decision(source.current, Clock())
    f = _flow(SUBJECT, "clinic.nhs.uk:443")
    state = conn_state(f.client_conn)
    state.decision, state.refs = "intercepted", (REF,)
    d.requestheaders(f)
    fs = flow_state(f)
    assert f.response is not None and f.response.status_code == MISDIRECTED
    assert fs is not None and fs.refs == ()
    forget(f.client_conn)


def test_non_subject_and_unidentified_get_no_refs(source: SnapshotSource) -> None:
    d = Decision(source.current, Clock())
    for principal in (OTHER, None):
        f = _flow(principal, "www.example.test", tls=False)
        d.requestheaders(f)
        fs = flow_state(f)
        assert fs is not None and fs.refs == ()
        forget(f.client_conn)


def test_subject_no_longer_covered_is_not_recorded_and_killed(source: SnapshotSource) -> None:
    later = Clock(fixed=datetime(2099, 1, 1, tzinfo=UTC))  # long after any expiry
    d = Decision(source.current, later)
    f = _flow(SUBJECT, "www.example.test")
    state = conn_state(f.client_conn)
    state.decision, state.refs = "intercepted", (REF,)
    d.requestheaders(f)
    fs = flow_state(f)
    assert fs is not None and fs.refs == ()
    assert f.error is not None  # killed
    forget(f.client_conn)


def test_plain_http_for_a_subject_is_archived_unless_do_not_decrypt(
    source: SnapshotSource,
) -> None:
    d = Decision(source.current, Clock())
    f = _flow(SUBJECT, "www.example.test", tls=False)
    d.requestheaders(f)
    assert flow_state(f).refs == (REF,)  # type: ignore[union-attr]
    g = _flow(SUBJECT, "x.nhs.uk", tls=False)
    d.requestheaders(g)
    assert flow_state(g).refs == () and g.response is None  # type: ignore[union-attr]
    forget(f.client_conn)
    forget(g.client_conn)


def test_notice_host_is_never_archived(source: SnapshotSource) -> None:
    d = Decision(source.current, Clock(), notice_host="notice.lbm.invalid")
    f = _flow(SUBJECT, "notice.lbm.invalid", tls=False)
    d.requestheaders(f)
    assert flow_state(f).refs == ()  # type: ignore[union-attr]
    forget(f.client_conn)


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        pytest.param("www.Example.test:443", "www.example.test", id="port-and-case"),
        pytest.param("[2001:db8::1]:8443", "2001:db8::1", id="ipv6"),
        pytest.param("2001:db8::1", "2001:db8::1", id="bare-ipv6"),
        pytest.param("dnd.nhs.uk.", "dnd.nhs.uk", id="trailing-dot"),
    ],
)
def test_host_of(authority: str, host: str) -> None:
    assert _host_of(authority) == host


def test_pinned_clients_window_and_bound() -> None:
    p = PinnedClients(60, max_entries=2)
    p.refused("10.0.0.1", "Bank.example", 1000)
    assert p.pass_through("10.0.0.1", "bank.example", 1059)
    assert not p.pass_through("10.0.0.2", "bank.example", 1001)  # another client
    assert not p.pass_through("10.0.0.1", "bank.example", 1061)  # window over
    p.refused("10.0.0.1", "a", 0)
    p.refused("10.0.0.1", "b", 0)
    p.refused("10.0.0.1", "c", 0)
    assert not p.pass_through("10.0.0.1", "a", 1)  # the oldest was dropped
    assert PinnedClients(0).pass_through("x", "y", 0) is False


@pytest.mark.parametrize(
    "message",
    [
        "Client closed connection before completing request headers: b'GET /secret?q=tok'",
        "127.0.0.1:5555: Invalid header line: b'X-Canary tok'",
        "Cannot parse ClientHello: 16030100746f6b",
        "some future message quoting tok",
    ],
)
def test_log_filter_never_echoes_a_message(message: str) -> None:
    record = logging.LogRecord("mitmproxy.proxy.server", logging.WARNING, __file__, 1,
                               message + " %s", ("tok-arg",), None)  # fmt: skip
    record.client = ("127.0.0.9", 4444)
    assert logfilter.PrivacyFilter().filter(record)
    shown = record.getMessage()
    assert "tok" not in shown and "secret" not in shown and "746f6b" not in shown
    logfilter.take_client_event(("127.0.0.9", 4444))


def test_log_filter_notes_the_client_error_once() -> None:
    record = logging.LogRecord("mitmproxy.proxy.server", logging.INFO, __file__, 1,
                               "Closing connection due to inactivity: x", (), None)  # fmt: skip
    record.client = ("127.0.0.8", 1234)
    logfilter.PrivacyFilter().filter(record)
    assert logfilter.take_client_event(("127.0.0.8", 1234)) == "timeout"
    assert logfilter.take_client_event(("127.0.0.8", 1234)) is None


def test_our_own_records_pass_unchanged() -> None:
    record = logging.LogRecord("lbm.web", logging.WARNING, __file__, 1, "closing %d", (3,), None)
    logfilter.PrivacyFilter().filter(record)
    assert record.getMessage() == "closing 3"


def test_error_codes_never_carry_text() -> None:
    assert error_code("[Errno 111] Connect call failed ('127.0.0.1', 1)") == "upstream_refused"
    assert error_code("[Errno -2] Name or service not known") == "dns_failed"
    assert error_code("Certificate verify failed: unable to get local issuer") == (
        "upstream_tls_failed"
    )
    assert error_code("something new with /path?secret") == "error"
    assert error_code(None) is None


def test_community_id_matches_the_reference_implementation() -> None:
    communityid = pytest.importorskip("communityid")
    cid = communityid.CommunityID(seed=0, use_base64=True)
    for src, dst, sp, dp in [("10.0.0.1", "192.168.1.2", 51000, 443),
                             ("2001:db8::1", "2001:db8::2", 80, 50000)]:  # fmt: skip
        expected = cid.calc(communityid.FlowTuple.make_tcp(src, dst, sp, dp))
        ours = community_id(src, dst, sp, dp)
        assert ours is not None and ours.endswith(expected.split(":")[-1])
