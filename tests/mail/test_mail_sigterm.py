"""SIGTERM under load loses no accepted message.

Six client threads send 600 messages over reused connections. SIGTERM reaches `lbm smtp run`
after about a third were answered 250: it must exit 0 within the timeout, and at that moment
every message answered 250 is either at the upstream or in the spool (nothing accepted is lost,
even in flight to the upstream). The clients keep retrying what was not answered 250 (as MTAs
do); after a restart the spool is resumed and every acknowledged message reaches the upstream,
with its `queued` and `delivered` email rows.
"""

from __future__ import annotations

import hashlib
import re
import signal
import threading
import time

from mail_relay import OTHER_ADDR, OUTSIDE_ADDR, Relay, spool_entries, wait_until
from smtp_upstream import RawClient, SmtpProtocolError

from store.metadata import read_stream
from store.paths import DataPaths

TOTAL = 600
THREADS = 6
MID_RE = re.compile(rb"^Message-ID: <([^>]+)>\r$", re.MULTILINE)


def _message(mid: str) -> bytes:
    return (
        f"From: <{OTHER_ADDR}>\r\nTo: <{OUTSIDE_ADDR}>\r\nSubject: sigterm\r\n"
        f"Message-ID: <{mid}>\r\n\r\n" + "y" * 4000 + "\r\n"
    ).encode()


def _mids(chunks: list[bytes]) -> set[str]:
    return {m.group(1).decode() for c in chunks if (m := MID_RE.search(c))}


def test_sigterm_under_load_loses_no_accepted_message(relay: Relay) -> None:
    ids = [f"term-{n:04d}@force.example" for n in range(TOTAL)]
    acked: set[str] = set()
    lock = threading.Lock()
    deadline = time.monotonic() + 180

    def run(mine: list[str]) -> None:
        queue = list(mine)
        client: RawClient | None = None
        while queue and time.monotonic() < deadline:
            try:
                if client is None:
                    client = RawClient(relay.host, relay.port, timeout=30)
                    client.ehlo()
                result = client.send_message(OTHER_ADDR, [OUTSIDE_ADDR], _message(queue[0]))
            except (OSError, SmtpProtocolError):
                result = None
            if result is not None and result.code == 250:
                with lock:
                    acked.add(queue.pop(0))
                continue
            if client is not None:
                client.close()
            client = None
            time.sleep(0.05)
        if client is not None:
            client.quit()

    threads = [threading.Thread(target=run, args=(ids[i::THREADS],)) for i in range(THREADS)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) >= TOTAL // 3, 120, f"{TOTAL // 3} acknowledgements")
    assert relay.stop(signal.SIGTERM, timeout=60) == 0
    with lock:
        acked_at_exit = set(acked)
    upstream = _mids([m.content for m in relay.upstream.messages])
    spooled = _mids([p.read_bytes() for p in spool_entries(relay.data_dir) if p.suffix == ".msg"])
    lost = acked_at_exit - upstream - spooled
    assert not lost, f"{len(lost)} messages answered 250 are neither upstream nor spooled"
    print(f"at SIGTERM: {len(acked_at_exit)} answered 250, {len(upstream & acked_at_exit)} "
          f"upstream, {len(spooled)} spooled")  # fmt: skip

    relay.start()
    for t in threads:
        t.join(timeout=200)
    assert acked == set(ids)
    wait_until(
        lambda: _mids([m.content for m in relay.upstream.messages]) >= set(ids),
        120,
        "every acknowledged message at the upstream",
    )
    relay.wait_drained()
    assert relay.stop() == 0
    outcomes: dict[str | None, set[str]] = {}
    for row in read_stream(DataPaths(relay.data_dir), "email").to_pylist():
        outcomes.setdefault(row["message_id_sha256"], set()).add(row["outcome"])
    sha = {m: hashlib.sha256(f"<{m}>".encode()).hexdigest() for m in ids}
    lacking = [m for m in ids if not {"queued", "delivered"} <= outcomes.get(sha[m], set())]
    assert not lacking, f"{len(lacking)} messages lack their queued or delivered row"
