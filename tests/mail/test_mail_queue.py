"""`lbm smtp queue`: the listing shows no address, subject or body; retry and remove work with a
running relay (`lbm smtp run`, through spool/requests/) and without one; remove is audited.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbm_testing import Lbm
from mail_relay import Relay, set_option, wait_until
from smtp_upstream import RecordingUpstream, send_raw

from appliance.mail.spool import Envelope, Spool, new_id

CANARY = "QCANARY5521"
LOCAL = "zq-local-part"


def _spool_one(data_dir: Path, rcpts: list[str]) -> Envelope:
    env = Envelope(
        id=new_id(),
        mail_from=f"{LOCAL}1@force.example",
        rcpts=rcpts,
        received=1.0e9,
        size=40,
        client_ip="127.0.0.1",
        attempts=2,
        next_try=4.0e9,
    )
    message = f"Received: x\r\nSubject: {CANARY}\r\n\r\n{CANARY} body\r\n".encode()

    async def go() -> None:
        spool = Spool(data_dir / "spool")
        await spool.accept(env, message)
        await spool.close()

    asyncio.run(go())
    return env


def test_listing_shows_domains_never_addresses_or_subjects(lbm: Lbm) -> None:
    rcpts = [f"{LOCAL}2@Remote.Example", f"{LOCAL}3@other.example", f"{LOCAL}4@remote.example"]
    env = _spool_one(lbm.data_dir, rcpts)
    text = lbm("smtp", "queue", check=True)
    data = json.loads(lbm("smtp", "queue", "--json", check=True).stdout)
    for output in (text.stdout + text.stderr, json.dumps(data)):
        assert LOCAL not in output and CANARY not in output
    [item] = data["messages"]
    assert item["id"] == env.id and env.id in text.stdout
    assert item["domains"] == ["other.example", "remote.example"]
    assert (item["attempts"], item["size"], item["recipients"]) == (2, 40, 3)
    assert item["age_seconds"] > 0 and item["next_try"].endswith("Z")
    assert "other.example,remote.example" in text.stdout


def test_remove_without_a_relay_is_audited(lbm: Lbm) -> None:
    env = _spool_one(lbm.data_dir, ["x@remote.example"])
    keep = _spool_one(lbm.data_dir, ["y@remote.example"])
    missing_reason = lbm("smtp", "queue", "remove", env.id)
    assert missing_reason.returncode == 2 and "--reason" in missing_reason.stderr
    assert lbm("smtp", "queue", "remove", "NOT/AN-ID", "--reason", "x").returncode == 2
    assert lbm("smtp", "queue", "remove", "0" * 19, "--reason", "x").returncode == 1
    lbm("smtp", "queue", "remove", env.id, "--reason", "sender asked", check=True)
    spool = lbm.data_dir / "spool"
    assert not (spool / f"{env.id}.json").exists() and not (spool / f"{env.id}.msg").exists()
    assert (spool / f"{keep.id}.json").exists()
    log = (lbm.data_dir / "audit" / "audit.jsonl").read_text()
    entries = [json.loads(line) for line in log.splitlines()]
    [removed] = [e for e in entries if e["action"] == "spool_remove"]
    assert env.id in json.dumps(removed) and "sender asked" in json.dumps(removed)
    assert CANARY not in log and LOCAL not in log


def test_retry_all_without_a_relay_makes_entries_due(lbm: Lbm) -> None:
    env = _spool_one(lbm.data_dir, ["x@remote.example"])
    assert lbm("smtp", "queue", "retry").returncode == 2
    lbm("smtp", "queue", "retry", "--all", check=True)
    data = json.loads(lbm("smtp", "queue", "--json", check=True).stdout)
    assert [(m["id"], m["next_try"]) for m in data["messages"]] == [(env.id, "now")]


@pytest.fixture
def slow_retry_relay(lbm: Lbm, tmp_path: Path) -> Iterator[Relay]:
    """A running `lbm smtp run` whose retries are an hour apart, its upstream down."""
    with RecordingUpstream() as upstream:
        for key, value in {
            "upstream_host": '"127.0.0.1"',
            "upstream_port": str(upstream.port),
            "upstream_starttls": '"optional"',
            "retry_initial_seconds": "3600",
            "retry_max_seconds": "3600",
        }.items():
            set_option(lbm.data_dir, "smtp", key, value)
        relay = Relay(lbm, upstream, tmp_path).start()
        upstream.stop()
        try:
            yield relay
        finally:
            relay.close()


def _send(relay: Relay, n: int) -> None:
    for i in range(n):
        payload = f"Subject: {CANARY} {i}\r\n\r\n{CANARY}\r\n".encode()
        assert (
            send_raw(
                relay.host,
                relay.port,
                "someone@force.example",
                [f"{LOCAL}@remote.example"],
                payload,
            ).code
            == 250
        )


def _listing(lbm: Lbm) -> list[dict[str, object]]:
    return list(json.loads(lbm("smtp", "queue", "--json", check=True).stdout)["messages"])


def test_retry_and_remove_through_a_running_relay(slow_retry_relay: Relay) -> None:
    relay = slow_retry_relay
    lbm = relay.lbm
    _send(relay, 2)
    wait_until(
        lambda: [m for m in _listing(lbm) if m["attempts"] == 1] and len(_listing(lbm)) == 2,
        30,
        "two deferred messages",
    )
    first, second = (m["id"] for m in _listing(lbm))
    lbm("smtp", "queue", "remove", str(second), "--reason", "test removal", check=True)
    assert [m["id"] for m in _listing(lbm)] == [first]
    relay.upstream.start()
    lbm("smtp", "queue", "retry", str(first), check=True)  # not an hour later: now
    relay.upstream.wait_for(1, timeout=20)
    relay.wait_drained(timeout=20)
    assert len(relay.upstream.messages) == 1
    assert relay.stop() == 0
    assert LOCAL not in relay.stderr() and CANARY not in relay.stderr()
