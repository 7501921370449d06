"""Archives: records round-trip, the real `age` opens segments through the key chain, the
gateway alone cannot, shredding works on copies, segments rotate, verification catches tampering,
crashes leave truncated-but-readable segments, and failures raise clean ArchiveErrors."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store import ArchiveError, KeyError_, signing
from store import agefile as age
from store.archive import Archive
from store.audit import AuditLog
from store.clock import Clock
from store.framing import PlainStream, Record, read_records
from store.keys import KeyStore
from store.manifest import verify_all
from store.paths import DataPaths
from store.segment import SegmentWriter, claim

REF = "AUTH-2026-001"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
needs_age = pytest.mark.skipif(
    shutil.which("age") is None, reason="the `age` Debian package is not installed"
)


@dataclass
class Env:
    paths: DataPaths
    key: signing.GatewayKey
    clock: Clock
    audit: AuditLog
    inv_file: Path
    inv_text: str

    def archive(self, **kw: object) -> Archive:
        return Archive(self.paths, self.key, self.clock, audit=self.audit, **kw)  # type: ignore[arg-type]

    def read(
        self, ref: str, n: int, *, allow_truncated: bool = False, path: Path | None = None
    ) -> tuple[list[Record], bool]:
        ks = KeyStore(self.paths)
        seg_key = ks.unwrap_segment(ref, n, ks.unwrap_authorisation(ref, self.inv_text))
        with (path or self.paths.archive / ref / f"{n:06d}.age").open("rb") as fh:
            reader = age.AgeReader(fh, [seg_key], allow_truncated=allow_truncated)
            return read_records(PlainStream(reader.chunks())), reader.truncated

    def actions(self) -> list[str]:
        return [e["action"] for e in self.audit.entries()]


def make_env(root: Path) -> Env:
    paths = DataPaths(root / "data")
    key = signing.create(paths, "gw1")
    clock = Clock(fixed=T0)
    audit = AuditLog(paths, key, clock, witness=False)
    secret, public = age.generate()
    inv_file = root / "investigator.key"
    inv_file.write_text(age.identity_file_text(secret, ["test investigator"]))
    KeyStore(paths).create_authorisation_key(REF, [public])
    return Env(paths, key, clock, audit, inv_file, inv_file.read_text())


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def _write(
    archive: Archive,
    pieces: list[bytes],
    *,
    ref: str = REF,
    channel: str = "email",
    kind: str = "message",
    ts: datetime = T0,
) -> str:
    sink = archive.open_record(ref, channel, "p12345", ts, kind)
    for piece in pieces:
        sink.write(piece)
    return sink.close()


def test_records_round_trip(env: Env) -> None:
    archive = env.archive()
    contents = [
        [b""],
        [b"From: a@x\r\n\r\nhello\r\n"],
        [os.urandom(70_000), b"tail"],
        [os.urandom(1000) for _ in range(300)],
    ]
    ids = [_write(archive, c, kind=f"k{i}") for i, c in enumerate(contents)]
    assert ids == [f"{REF}/000001/{n}" for n in range(1, 5)]
    assert not archive.segment_closed(ids[0])
    assert archive.close() == [f"{REF}/000001"]
    assert archive.segment_closed(ids[0])
    records, truncated = env.read(REF, 1)
    assert not truncated
    assert [r.data for r in records] == [b"".join(c) for c in contents]
    for i, record in enumerate(records):
        assert record.header == {
            "id": ids[i],
            "channel": "email",
            "kind": f"k{i}",
            "ts": "2026-03-01T09:00:00Z",
            "principal": "p12345",
            "length": None,
            "framing": "chunked",
        }
        assert record.trailer == {"length": len(record.data)}
    index = [
        json.loads(line)
        for line in (env.paths.archive / REF / "000001.index.jsonl").read_text().splitlines()
    ]
    assert [i["id"] for i in index] == ids
    assert [i["length"] for i in index] == [len(r.data) for r in records]
    manifest = json.loads((env.paths.archive / REF / "000001.manifest.json").read_text())
    assert manifest["records"] == 4 and manifest["principals"] == ["p12345"]
    assert manifest["channels"] == ["email"] and manifest["truncated"] is False
    assert manifest["first_ts"] == manifest["last_ts"] == "2026-03-01T09:00:00Z"
    assert verify_all(env.paths.archive, env.key.known_keys()).ok
    assert env.actions().count("segment_close") == 1


def test_content_never_appears_in_plaintext_anywhere(env: Env) -> None:
    canary = b"CANARY-7f3e-subject-body"
    archive = env.archive()
    _write(archive, [canary * 3])
    archive.close()
    for path in env.paths.root.rglob("*"):
        if path.is_file():
            assert canary not in path.read_bytes(), path
    records, _ = env.read(REF, 1)
    assert records[0].data == canary * 3


@needs_age
def test_age_cli_decrypts_a_segment_through_the_key_chain(env: Env, tmp_path: Path) -> None:
    archive = env.archive()
    body = os.urandom(150_000)
    _write(archive, [b"first"])
    _write(archive, [body], channel="web", kind="response")
    archive.close()

    def age_d(identity: Path, src: Path, out: Path) -> None:
        subprocess.run(["age", "-d", "-i", str(identity), "-o", str(out), str(src)], check=True)

    age_d(env.inv_file, env.paths.keystore / REF / "auth.age", tmp_path / "auth.key")
    age_d(tmp_path / "auth.key", env.paths.keystore / REF / "000001.age", tmp_path / "seg.key")
    age_d(tmp_path / "seg.key", env.paths.archive / REF / "000001.age", tmp_path / "plain")
    records = read_records(io.BytesIO((tmp_path / "plain").read_bytes()))
    assert [r.data for r in records] == [b"first", body]
    assert records[1].header["channel"] == "web"


@needs_age
def test_gateway_blind_whole_data_dir_opens_no_segment(lbm: object, tmp_path: Path) -> None:
    """With a copy of everything the gateway holds (data dir, config, keys) and no investigator
    identity, no segment can be decrypted, by the real age or by our reader."""
    data = lbm.data_dir  # type: ignore[attr-defined]
    paths = DataPaths(data)
    key = signing.load(paths)
    secret, public = age.generate()
    KeyStore(paths).create_authorisation_key(REF, [public])
    archive = Archive(paths, key, Clock())
    _write(archive, [b"secret subject content"])
    _write(archive, [b"more"], channel="web", kind="request")
    archive.close()
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    segment = copy / "archive" / REF / "000001.age"
    candidates = [p for p in copy.rglob("*") if p.is_file() and p != segment]
    assert any(p.name == "gateway_ed25519" for p in candidates)
    assert any(p.parent.name == REF and p.name == "auth.age" for p in candidates)
    readers = []
    for path in candidates:
        proc = subprocess.run(["age", "-d", "-i", str(path), str(segment)], capture_output=True)
        assert proc.returncode != 0 and proc.stdout == b"", path
        try:
            identities = age.parse_identity_file(path.read_text(errors="replace"))
        except age.AgeError:
            continue
        readers.append(path)
        with segment.open("rb") as fh, pytest.raises(age.AgeError):
            age.AgeReader(fh, identities).read_all()
    assert readers == []  # no identity file anywhere in the data dir
    # control: the investigator identity opens it (so the test above can fail)
    inv = age.identity_file_text(secret)
    ks = KeyStore(DataPaths(copy))
    seg_key = ks.unwrap_segment(REF, 1, ks.unwrap_authorisation(REF, inv))
    with segment.open("rb") as fh:
        assert b"secret subject content" in age.AgeReader(fh, [seg_key]).read_all()


def test_destroying_wrapped_keys_makes_copied_segments_unreadable(env: Env, tmp_path: Path) -> None:
    archive = env.archive(segment_max_bytes=1)
    _write(archive, [b"one"])
    _write(archive, [b"two"])
    archive.close()
    backup = tmp_path / "backup"
    shutil.copytree(env.paths.archive, backup)
    assert env.read(REF, 1, path=backup / REF / "000001.age")[0][0].data == b"one"
    KeyStore(env.paths).destroy_segment(REF, 1)
    with pytest.raises(KeyError_, match="missing"):
        env.read(REF, 1, path=backup / REF / "000001.age")
    assert env.read(REF, 2, path=backup / REF / "000002.age")[0][0].data == b"two"
    KeyStore(env.paths).destroy_authorisation(REF)
    with pytest.raises(KeyError_, match="destroyed"):
        env.read(REF, 2, path=backup / REF / "000002.age")
    with pytest.raises(ArchiveError, match="destroyed"):
        archive2 = env.archive()
        archive2.open_record(REF, "email", "p12345", T0, "message")


def test_segments_rotate_by_size_and_chain(env: Env) -> None:
    archive = env.archive(segment_max_bytes=100_000)
    ids = [_write(archive, [os.urandom(60_000)]) for _ in range(5)]
    archive.close()
    # a segment closes when a record ends past the limit; records never span segments
    assert ids == [
        f"{REF}/000001/1",
        f"{REF}/000001/2",
        f"{REF}/000002/1",
        f"{REF}/000002/2",
        f"{REF}/000003/1",
    ]
    report = verify_all(env.paths.archive, env.key.known_keys())
    assert report.ok and report.segments == 3
    heads = [
        json.loads((env.paths.archive / REF / f"00000{n}.manifest.json").read_text())
        for n in (1, 2, 3)
    ]
    assert [h["chain_seq"] for h in heads] == [1, 2, 3]


def test_segment_closes_sixty_seconds_after_first_record(env: Env) -> None:
    archive = env.archive()
    record = _write(archive, [b"x"])
    env.clock.set(T0 + timedelta(seconds=59))
    _write(archive, [b"y"])
    assert archive.tick() == []
    env.clock.set(T0 + timedelta(seconds=60))
    assert archive.tick() == [f"{REF}/000001"]
    assert archive.segment_closed(record)
    assert env.actions()[-1] == "segment_close"
    assert _write(archive, [b"z"]) == f"{REF}/000002/1"


def test_streaming_record_holds_its_segment_and_others_do_not_wait(env: Env) -> None:
    archive = env.archive()
    long = archive.open_record(REF, "packets", "p12345", T0, "flow")
    long.write(b"packet-1")
    other = _write(archive, [b"mail"])
    assert other == f"{REF}/000002/1"
    env.clock.set(T0 + timedelta(seconds=61))
    assert archive.tick() == [f"{REF}/000002"]  # the idle one closes now
    assert archive.open_segments() == [f"{REF}/000001"]
    long.write(b"packet-2")
    assert long.close() == f"{REF}/000001/1"  # the busy one closes when its record ends
    assert archive.open_segments() == []
    assert env.read(REF, 1)[0][0].data == b"packet-1packet-2"
    assert verify_all(env.paths.archive, env.key.known_keys()).ok


def test_concurrent_writers_on_several_refs(env: Env) -> None:
    secret, public = age.generate()
    KeyStore(env.paths).create_authorisation_key("AUTH-2", [public])
    archive = env.archive(segment_max_bytes=300_000)
    written: dict[str, bytes] = {}
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(15):
            body = os.urandom(((n * 7 + i) % 5) * 20_000 + 1)
            ref = REF if (n + i) % 2 else "AUTH-2"
            sink = archive.open_record(ref, "web", "p12345", T0, "body")
            for start in range(0, len(body), 7000):
                sink.write(body[start : start + 7000])
            record_id = sink.close()
            with lock:
                written[record_id] = body

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    archive.close()
    assert len(written) == 60
    found: dict[str, bytes] = {}
    for ref, inv in ((REF, env.inv_text), ("AUTH-2", age.identity_file_text(secret))):
        ks = KeyStore(env.paths)
        auth = ks.unwrap_authorisation(ref, inv)
        for seg in sorted((env.paths.archive / ref).glob("*.age")):
            key = ks.unwrap_segment(ref, int(seg.stem), auth)
            with seg.open("rb") as fh:
                for r in read_records(PlainStream(age.AgeReader(fh, [key]).chunks())):
                    found[r.header["id"]] = r.data
    assert found == written
    assert verify_all(env.paths.archive, env.key.known_keys()).ok


def test_unknown_reference_and_bad_arguments_are_refused(env: Env) -> None:
    archive = env.archive()
    with pytest.raises(ArchiveError, match=r"AUTH-NONE.*no key"):
        archive.open_record("AUTH-NONE", "email", "p1", T0, "message")
    with pytest.raises(ArchiveError, match="unknown channel"):
        archive.open_record(REF, "fax", "p1", T0, "message")
    with pytest.raises(ArchiveError, match="reference"):
        archive.open_record("../x", "email", "p1", T0, "message")
    sink = archive.open_record(REF, "email", "p1", T0, "message")
    sink.close()
    with pytest.raises(ArchiveError, match="closed already"):
        sink.close()


# -- verification and tampering ------------------------------------------------------------------
def _three_segments(env: Env) -> Path:
    archive = env.archive(segment_max_bytes=1)
    for n in range(4):
        _write(archive, [f"record {n}".encode() * 50])
    archive.close()
    directory = env.paths.archive / REF
    assert verify_all(env.paths.archive, env.key.known_keys()).ok
    return directory


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _swap(directory: Path, a: str, b: str) -> None:
    for suffix in (".age", ".index.jsonl", ".manifest.json"):
        pa, pb = directory / f"{a}{suffix}", directory / f"{b}{suffix}"
        tmp = directory / "swap.tmp"
        pa.rename(tmp)
        pb.rename(pa)
        tmp.rename(pb)


TAMPERS = {
    "manifest byte": (lambda d: _flip(d / "000002.manifest.json", 60), "000002"),
    "manifest count": (
        lambda d: (d / "000002.manifest.json").write_text(
            (d / "000002.manifest.json").read_text().replace('"records":1', '"records":2')
        ),
        "000002",
    ),
    "segment byte": (lambda d: _flip(d / "000003.age", 400), "000003"),
    "segment appended": (lambda d: (d / "000001.age").open("ab").write(b"x"), "000001"),
    "index byte": (lambda d: _flip(d / "000002.index.jsonl", 5), "000002"),
    "middle segment deleted": (
        lambda d: [(d / f"000002{s}").unlink() for s in (".age", ".index.jsonl", ".manifest.json")],
        "000003",
    ),
    "only the ciphertext deleted": (lambda d: (d / "000002.age").unlink(), "000002"),
    "reordered": (lambda d: _swap(d, "000002", "000003"), "00000"),
    "newest segment deleted": (
        lambda d: [(d / f"000004{s}").unlink() for s in (".age", ".index.jsonl", ".manifest.json")],
        "chain head",
    ),
    "manifest deleted": (lambda d: (d / "000003.manifest.json").unlink(), "000003"),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_verify_catches_tampering_and_names_the_segment(env: Env, tamper: str) -> None:
    directory = _three_segments(env)
    action, names = TAMPERS[tamper]
    action(directory)
    report = verify_all(env.paths.archive, env.key.known_keys())
    assert not report.ok
    assert any(names in p for p in report.problems), report.problems
    assert all(p.startswith(REF) for p in report.problems)


def test_verify_accepts_manifests_signed_before_a_key_rotation(env: Env) -> None:
    _three_segments(env)
    signing.rotate(env.paths, "gw1")
    new_key = signing.load(env.paths)
    archive = Archive(env.paths, new_key, env.clock)
    _write(archive, [b"after rotation"])
    archive.close()
    public = signing.load_public_keys(env.paths)
    assert len(public) == 2
    report = verify_all(env.paths.archive, public)
    assert report.ok and report.segments == 5
    # without the retired key the old manifests no longer verify
    only_new = {new_key.fingerprint: new_key.public}
    assert not verify_all(env.paths.archive, only_new).ok


# -- crashes and failures ------------------------------------------------------------------------
CRASH_SCRIPT = """
import os, signal, sys
from pathlib import Path
from store import signing
from store.archive import Archive
from store.clock import Clock
from store.paths import DataPaths
paths = DataPaths(Path(sys.argv[1]))
archive = Archive(paths, signing.load(paths), Clock())
sink = archive.open_record(sys.argv[2], "email", "p12345", "2026-03-01T09:00:00Z", "message")
sink.write(b"complete record")
sink.close()
sink = archive.open_record(sys.argv[2], "web", "p12345", "2026-03-01T09:00:01Z", "response")
block = bytes(range(256)) * 1024
for _ in range(int(sys.argv[3])):
    sink.write(block)
print("ready", flush=True)
if sys.argv[4] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()
"""


def test_kill_9_mid_record_then_recover_marks_segment_truncated(env: Env) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(env.paths.root), REF, "3", "kill"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -9 and "ready" in proc.stdout
    report = verify_all(env.paths.archive, env.key.known_keys())
    assert not report.ok and "000001: segment has no manifest" in report.problems[0]
    archive = env.archive()
    assert archive.recover() == [f"{REF}/000001"]
    assert archive.recover() == []
    report = verify_all(env.paths.archive, env.key.known_keys())
    assert report.ok and report.truncated == [f"{REF}/000001"]
    manifest = json.loads((env.paths.archive / REF / "000001.manifest.json").read_text())
    assert manifest["truncated"] is True and manifest["records"] == 1
    entry, recovered = list(env.audit.entries())[-2:]
    assert entry["action"] == "segment_truncated" and entry["refs"] == [REF]
    assert entry["fields"]["segment_number"] == 1 and entry["fields"]["ref"] == REF
    assert entry["fields"]["ciphertext_sha256"] == manifest["ciphertext_sha256"]
    assert recovered["action"] == "archive_recovered" and recovered["refs"] == [REF]
    assert recovered["fields"]["segments"] == [f"{REF}/000001"]
    # the investigator gets the authenticated prefix: the first record whole, the second cut
    with pytest.raises(age.AgeError, match="truncated"):
        env.read(REF, 1)
    records, truncated = env.read(REF, 1, allow_truncated=True)
    assert truncated
    assert records[0].data == b"complete record" and records[0].complete
    assert not records[1].complete
    assert (bytes(range(256)) * 1024 * 3).startswith(records[1].data)
    assert len(records[1].data) >= 65536  # whole 64 KiB chunks before the kill survive
    # the archive carries on with a new segment after the truncated one
    assert _write(archive, [b"after"]) == f"{REF}/000002/1"
    archive.close()
    assert verify_all(env.paths.archive, env.key.known_keys()).ok


def test_recover_leaves_a_live_writers_segment_alone(env: Env) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(env.paths.root), REF, "1", "wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert env.archive().recover() == []
        report = verify_all(env.paths.archive, env.key.known_keys())
        assert report.ok and report.open_segments == [f"{REF}/000001"]
    finally:
        proc.kill()
        proc.wait()
    assert env.archive().recover() == [f"{REF}/000001"]


FSIZE_SCRIPT = """
import json, resource, signal, sys
from pathlib import Path
from store import ArchiveError, signing
from store.archive import Archive
from store.clock import Clock
from store.paths import DataPaths
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
paths = DataPaths(Path(sys.argv[1]))
archive = Archive(paths, signing.load(paths), Clock())
sink = archive.open_record(sys.argv[2], "email", "p12345", "2026-03-01T09:00:00Z", "message")
try:
    for _ in range(20):
        sink.write(b"CANARY-fsize-" * 5000)
    sink.close()
    print(json.dumps({"error": None}))
except ArchiveError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def test_file_size_limit_gives_clean_error_and_no_valid_looking_segment(env: Env) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FSIZE_SCRIPT, str(env.paths.root), REF],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert error is not None and "file size limit exceeded" in error
    assert f"{REF}/000001" in error and "CANARY" not in error
    env.archive().recover()
    report = verify_all(env.paths.archive, env.key.known_keys())
    assert report.ok and report.truncated == [f"{REF}/000001"]


def test_disk_full_on_a_tiny_tmpfs(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        env = make_env(mount)
        filler = mount / "filler"  # stands for whatever the operator frees afterwards
        filler.write_bytes(b"\0" * 200_000)
        archive = env.archive()
        canary = b"CANARY-disk-full-"
        sink = archive.open_record(REF, "email", "p12345", T0, "message")
        with pytest.raises(ArchiveError) as caught:
            for _ in range(200):
                sink.write(canary * 1000)
            sink.close()
        message = str(caught.value)
        assert "disk full" in message and f"{REF}/000001" in message
        assert "CANARY" not in message
        with pytest.raises(ArchiveError, match="disk full"):
            _write(archive, [b"x" * 100_000])
        for path in (env.paths.archive / REF).glob("*.manifest.json"):
            assert json.loads(path.read_text())["truncated"] is True  # never a normal seal
        filler.unlink()
        env.archive().recover()
        report = verify_all(env.paths.archive, env.key.known_keys())
        assert report.ok and f"{REF}/000001" in report.truncated
        records, truncated = env.read(REF, 1, allow_truncated=True)
        assert truncated and records[0].header["id"] == f"{REF}/000001/1"
        assert (canary * 1000 * 200).startswith(records[0].data)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_permission_denied_is_a_clean_archive_error(env: Env) -> None:
    directory = env.paths.archive / REF
    directory.mkdir(parents=True)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode:
            pytest.skip("root, and chattr +i is not supported on this filesystem")
    else:
        directory.chmod(0o500)
    try:
        with pytest.raises(ArchiveError, match=f"archive {REF}: .*permission denied"):
            env.archive().open_record(REF, "email", "p12345", T0, "message")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        else:
            directory.chmod(0o700)
    assert _write(env.archive(), [b"works again"]) == f"{REF}/000001/1"


MEMORY_SCRIPT = """
import resource, sys
from pathlib import Path
from store import signing
from store.archive import Archive
from store.clock import Clock
from store.paths import DataPaths
paths = DataPaths(Path(sys.argv[1]))
archive = Archive(paths, signing.load(paths), Clock())
block = b"\\x5a" * (1 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sink = archive.open_record(sys.argv[2], "web", "p12345", "2026-03-01T09:00:00Z", "response")
for _ in range(int(sys.argv[3])):
    sink.write(block)
sink.close()
archive.close()
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_a_200_mb_record_streams_in_flat_memory(env: Env) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(env.paths.root), REF, "200"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    before_kib, peak_kib = map(int, proc.stdout.split())
    assert peak_kib - before_kib < 20 * 1024, (before_kib, peak_kib)  # vs a 200 MiB record
    size = (env.paths.archive / REF / "000001.age").stat().st_size
    assert size > 200 * (1 << 20)
    assert verify_all(env.paths.archive, env.key.known_keys()).ok


# -- the plaintext framing, property-tested ------------------------------------------------------
record_lists = st.lists(st.lists(st.binary(max_size=300), max_size=5), min_size=1, max_size=6)


def _segment_plaintext(records: list[list[bytes]]) -> tuple[bytes, list[str]]:
    """Write `records` through a real SegmentWriter and return the decrypted plaintext."""
    secret, public = age.generate()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        number, fd = claim(directory)
        writer = SegmentWriter(directory, "R1", number, fd, public)
        ids = []
        for i, pieces in enumerate(records):
            writer.begin_record("web", "body", "2026-03-01T09:00:00Z", f"p{i}")
            for piece in pieces:
                writer.write(piece)
            ids.append(writer.end_record().id)
        writer.finish()
        writer.release()
        index = [
            json.loads(x) for x in (directory / "000001.index.jsonl").read_text().split("\n") if x
        ]
        plain = age.decrypt_bytes((directory / "000001.age").read_bytes(), [secret])
    for entry, pieces in zip(index, records, strict=True):
        assert entry["length"] == sum(map(len, pieces))
        assert plain[entry["offset"] : entry["end"]].startswith(b'{"channel":"web"')
    return plain, ids


@settings(max_examples=50, deadline=None)
@given(records=record_lists)
def test_framing_round_trips_arbitrary_bytes(records: list[list[bytes]]) -> None:
    plain, ids = _segment_plaintext(records)
    parsed = read_records(io.BytesIO(plain))
    assert [r.header["id"] for r in parsed] == ids
    assert [r.data for r in parsed] == [b"".join(p) for p in records]
    assert all(r.complete for r in parsed)


@settings(max_examples=50, deadline=None)
@given(records=record_lists, where=st.floats(0, 1))
def test_framing_cut_anywhere_keeps_whole_records_and_flags_the_cut_one(
    records: list[list[bytes]], where: float
) -> None:
    plain, ids = _segment_plaintext(records)
    cut = int(len(plain) * where)
    parsed = read_records(io.BytesIO(plain[:cut]))
    wanted = [b"".join(p) for p in records]
    for i, record in enumerate(parsed):
        assert record.header["id"] == ids[i]
        if record.complete:
            assert record.data == wanted[i]
        else:
            assert i == len(parsed) - 1 and wanted[i].startswith(record.data)


def test_malformed_framing_names_the_offset() -> None:
    with pytest.raises(ArchiveError, match="offset 0: not a record header"):
        read_records(io.BytesIO(b"garbage\n"))
    with pytest.raises(ArchiveError, match="bad chunk length in record R/000001/1"):
        read_records(io.BytesIO(b'{"id":"R/000001/1"}\n-5\nxxxxx'))


MULTI_SCRIPT = """
import sys
from pathlib import Path
from store import signing
from store.archive import Archive
from store.clock import Clock
from store.paths import DataPaths
paths = DataPaths(Path(sys.argv[1]))
archive = Archive(paths, signing.load(paths), Clock(), segment_max_bytes=1)
for i in range(15):
    sink = archive.open_record(sys.argv[2], sys.argv[3], "p12345", "2026-03-01T09:00:00Z", "x")
    sink.write(f"{sys.argv[3]} {i}".encode())
    sink.close()
archive.close()
"""


def test_several_processes_share_one_archive_and_one_chain(env: Env) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", MULTI_SCRIPT, str(env.paths.root), REF, channel])
        for channel in ("web", "email", "packets")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    report = verify_all(env.paths.archive, env.key.known_keys())
    assert report.ok and report.segments == 45
    contents = sorted(env.read(REF, n)[0][0].data for n in range(1, 46))
    assert contents == sorted(
        f"{c} {i}".encode() for c in ("web", "email", "packets") for i in range(15)
    )


def test_a_failing_writer_leaves_an_aborted_record_and_close_waits_for_busy(env: Env) -> None:
    archive = env.archive()
    with pytest.raises(RuntimeError), archive.open_record(REF, "web", "p12345", T0, "body") as s:
        s.write(b"partial body")
        raise RuntimeError("upstream connection reset")
    busy = archive.open_record(REF, "email", "p12345", T0, "message")
    busy.write(b"still streaming")
    assert archive.close() == []  # the busy segment waits for its record
    with pytest.raises(ArchiveError, match="closed"):
        archive.open_record(REF, "email", "p12345", T0, "message")
    busy.close()
    assert not archive.open_segments()
    first, _ = env.read(REF, 1)
    assert first[0].data == b"partial body" and first[0].trailer == {"aborted": True, "length": 12}
    assert not first[0].complete
    index = (env.paths.archive / REF / "000001.index.jsonl").read_text()
    assert '"aborted":true' in index
    assert first[1].data == b"still streaming" and first[1].complete  # same, freed segment
    assert verify_all(env.paths.archive, env.key.known_keys()).ok
