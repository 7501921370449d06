"""The spool: durable before `accept` returns, fsyncs grouped, broken entries quarantined at
start (audited, reported without content) and never delivered, uncommitted leftovers removed.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from delivery_kit import Relay, RowSink, envelope, smtp_config, wait_until
from lbm_testing import Lbm
from smtp_upstream import RecordingUpstream

from appliance.cli.app import App
from appliance.mail.spool import Envelope, Spool, SpoolError, new_id

REPO = Path(__file__).resolve().parents[2]
CANARY = "SPOOLCANARY4410"


def _message(i: int = 0) -> bytes:
    return f"Received: x\r\nSubject: {CANARY} {i}\r\n\r\n{CANARY} body {i}\n.\n\r\n".encode()


async def _accept_all(spool: Spool, items: list[tuple[Envelope, bytes]]) -> None:
    await asyncio.gather(*(spool.accept(env, msg) for env, msg in items))


def test_ids_are_unique_and_time_ordered() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_accept_is_durable_and_grouped(tmp_path: Path) -> None:
    items = [(envelope(), _message(i)) for i in range(200)]

    async def go() -> Spool:
        spool = Spool(tmp_path / "spool")
        await _accept_all(spool, items)
        await spool.close()
        return spool

    spool = asyncio.run(go())
    assert spool.committed == 200
    assert spool.rounds < 50, f"{spool.rounds} fsync rounds for 200 concurrent accepts"
    mode = stat.S_IMODE((tmp_path / "spool").stat().st_mode)
    assert mode == 0o700
    for env, msg in items:
        assert (tmp_path / "spool" / f"{env.id}.msg").read_bytes() == msg
        assert stat.S_IMODE((tmp_path / "spool" / f"{env.id}.msg").stat().st_mode) == 0o600
    report = Spool(tmp_path / "spool").load()
    assert [e.id for e in report.entries] == sorted(e.id for e, _ in items)
    assert report.quarantined == [] and report.uncommitted == 0
    assert all(e.pending == e.rcpts for e in report.entries)


def test_without_group_commit_each_accept_is_its_own_round(tmp_path: Path) -> None:
    items = [(envelope(), _message(i)) for i in range(10)]

    async def go() -> Spool:
        spool = Spool(tmp_path / "spool", group_commit=False)
        await _accept_all(spool, items)
        await spool.close()
        return spool

    spool = asyncio.run(go())
    assert spool.committed == 10 and spool.rounds == 0
    loaded = Spool(tmp_path / "spool").load().entries
    assert {e.id for e in loaded} == {e.id for e, _ in items}


def test_accept_refuses_bad_input_and_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    """Bad ids and no recipients are refused; a write that fails (here: the message's name is
    taken by a directory) fails that accept only, not the others in its group-commit round."""
    blocked = envelope()
    others = [envelope() for _ in range(5)]

    async def go() -> list[BaseException | None]:
        spool = Spool(tmp_path / "spool")
        with pytest.raises(SpoolError, match="spool id"):
            await spool.accept(_with_id("../x"), b"m")
        with pytest.raises(SpoolError, match="recipient"):
            await spool.accept(_no_rcpt(), b"m")
        (spool.directory / f"{blocked.id}.msg").mkdir()
        results = await asyncio.gather(
            spool.accept(blocked, _message()),
            *(spool.accept(env, _message(i)) for i, env in enumerate(others)),
            return_exceptions=True,
        )
        with pytest.raises(SpoolError):  # an id in use: refused, the committed entry untouched
            await spool.accept(others[0], b"another message")
        await spool.close()
        return list(results)

    results = asyncio.run(go())
    assert isinstance(results[0], SpoolError) and "cannot write the spool" in str(results[0])
    assert CANARY not in str(results[0])
    assert results[1:] == [None] * 5
    (tmp_path / "spool" / f"{blocked.id}.msg").rmdir()
    names = {p.name for p in (tmp_path / "spool").iterdir()}
    assert not any(blocked.id in n for n in names)
    assert {e.id for e in Spool(tmp_path / "spool").load().entries} == {e.id for e in others}
    assert (tmp_path / "spool" / f"{others[0].id}.msg").read_bytes() == _message(0)


def _with_id(spool_id: str) -> Envelope:
    env = envelope()
    env.id = spool_id
    return env


def _no_rcpt() -> Envelope:
    env = envelope()
    env.rcpts = []
    return env


def _spool_entries(directory: Path, n: int) -> list[Envelope]:
    items = [(envelope(), _message(i)) for i in range(n)]

    async def go() -> None:
        spool = Spool(directory)
        await _accept_all(spool, items)
        await spool.close()

    asyncio.run(go())
    return [env for env, _ in items]


def test_corrupt_entries_are_quarantined_audited_and_never_delivered(
    tmp_path: Path, lbm: Lbm, capfd: pytest.CaptureFixture[str]
) -> None:
    spool_dir = lbm.data_dir / "spool"
    good, short, altered, bad_json, no_msg, wrong_shape = _spool_entries(spool_dir, 6)
    path = spool_dir.joinpath
    path(f"{short.id}.msg").write_bytes(_message()[:20])  # half-written message
    data = bytearray(path(f"{altered.id}.msg").read_bytes())
    data[-5] ^= 1
    path(f"{altered.id}.msg").write_bytes(bytes(data))  # same length, other bytes
    path(f"{bad_json.id}.json").write_bytes(b'{"id": "' + bad_json.id.encode() + b'", "mail')
    path(f"{no_msg.id}.msg").unlink()
    shape = json.loads(path(f"{wrong_shape.id}.json").read_bytes())
    shape["rcpts"] = "not-a-list"
    path(f"{wrong_shape.id}.json").write_text(json.dumps(shape))
    path("stray.bin").write_bytes(CANARY.encode())
    broken = {short.id, altered.id, bad_json.id, no_msg.id, wrong_shape.id}

    app = App(str(lbm.data_dir), None)
    rows = RowSink()
    with RecordingUpstream() as up:
        cfg = smtp_config(upstream_host="127.0.0.1", upstream_port=up.port,
                          upstream_starttls="optional")  # fmt: skip
        with Relay(spool_dir, cfg, rows=rows, audit=app.audit) as relay:
            up.wait_for(1)
            wait_until(lambda: not relay.spooled(), what="the good entry delivered")
            assert relay.worker is not None and relay.worker.counts["quarantined"] == 6
        assert [m.content for m in up.messages] == [_message(0)]
    assert {r["uid"] for r in rows.rows} == {good.id}
    quarantined = {p.name.split(".")[0] for p in (spool_dir / "quarantine").iterdir()}
    assert broken | {"stray"} <= quarantined
    err = capfd.readouterr().err
    for spool_id in broken:
        assert f"spool entry {spool_id} quarantined" in err
    assert CANARY not in err
    entries = [e for e in app.audit.entries() if e["action"] == "spool_quarantine"]
    assert {e["fields"]["spool_id"] for e in entries} >= broken
    assert CANARY not in json.dumps(entries)


def test_uncommitted_leftovers_are_removed_not_delivered(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    [kept] = _spool_entries(spool_dir, 1)
    orphan = new_id()
    (spool_dir / f"{orphan}.msg").write_bytes(_message(9))  # crash before the envelope
    (spool_dir / f".{orphan}.json.tmp").write_bytes(b"{")
    report = Spool(spool_dir).load()
    assert [e.id for e in report.entries] == [kept.id]
    assert report.uncommitted == 1 and report.quarantined == []
    assert sorted(p.name for p in spool_dir.iterdir()) == [f"{kept.id}.json", f"{kept.id}.msg"]


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, pathlib
    sys.path.insert(0, "tests/support")
    from delivery_kit import envelope
    from appliance.mail.spool import Spool

    async def main():
        spool = Spool(pathlib.Path(sys.argv[1]))
        n = 0
        while True:
            batch = [envelope() for _ in range(20)]
            await asyncio.gather(*(spool.accept(e, b"Subject: k\\r\\n\\r\\n" + b"x" * 20000)
                                   for e in batch))
            for e in batch:
                print(e.id, flush=True)
            n += 20

    asyncio.run(main())
    """
)


def test_kill_9_during_accepts_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Every id `accept` returned for before kill -9 loads back whole; nothing loads broken."""
    spool_dir = tmp_path / "spool"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(spool_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[str] = []
    assert proc.stdout is not None
    while len(acknowledged) < 300:
        line = proc.stdout.readline()
        assert line, "the accepting process died"
        acknowledged.append(line.strip())
    proc.kill()
    proc.wait(10)
    acknowledged += [line.strip() for line in proc.stdout.read().splitlines()]
    report = Spool(spool_dir).load()
    assert report.quarantined == []
    loaded = {e.id for e in report.entries}
    assert set(acknowledged) <= loaded
    assert all(e.msg_len == len(b"Subject: k\r\n\r\n") + 20000 for e in report.entries)
