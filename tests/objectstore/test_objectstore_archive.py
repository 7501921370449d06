"""Sealed archives on object storage (issue 19): uploaded and verified by hash before the local
copy goes, read back by `lbm archive verify` / `export-raw` / `records` exactly as from local
disk, never rewritten in place, kept locally while the store is down, and keys kept in their
own unversioned bucket where shredding deletes them.

The S3 server is moto's standalone server (tests/support/s3server.py), standing in for MinIO or
Ceph RGW; the product reaches it over HTTP through pyarrow (and boto3 for bucket versioning).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbm_testing import Lbm
from s3server import ACCESS_KEY, SECRET_KEY, Outage, S3Server, s3_archive_config

from store import KeyError_, signing
from store import agefile as age
from store.archive import Archive
from store.audit import AuditLog
from store.clock import Clock
from store.keys import KeyStore
from store.objectstore import StoreSettings
from store.paths import DataPaths

REF = "AUTH-S3-1"
CONTENT = b"From: a@force.example\r\n\r\nCANARY-S3-ARCHIVE\r\n"
BIG = bytes(range(256)) * 600  # 150 KiB: several age chunks
ARCH, KEYS, VERSIONED = "lbm-arch", "lbm-keys", "lbm-keys-versioned"


@pytest.fixture(scope="module")
def buckets(s3: S3Server) -> S3Server:
    s3.make_bucket(ARCH, object_lock=True)  # write-once archives: nothing is overwritten
    s3.make_bucket(KEYS)
    s3.make_bucket(VERSIONED, versioning=True)
    return s3


def configure(lbm: Lbm, endpoint: str, prefix: str, *, keys: str = KEYS) -> StoreSettings:
    return s3_archive_config(
        lbm.data_dir, endpoint, f"s3://{ARCH}/{prefix}", f"s3://{keys}/{prefix}"
    )


def make_archive(data: Path, tmp: Path, segments: int = 2) -> Path:
    """`segments` sealed segments of REF (as a daemon writes them: locally); returns the
    investigator's identity file."""
    paths = DataPaths(data)
    secret, public = age.generate()
    ident = tmp / "inv.key"
    ident.write_text(age.identity_file_text(secret))
    KeyStore(paths).create_authorisation_key(REF, [public])
    key = signing.load(paths)
    for n in range(segments):
        archive = Archive(paths, key, Clock(), audit=AuditLog(paths, key, Clock(), witness=False))
        for kind, body in (("message", CONTENT), ("body-chunk", BIG + bytes([n]))):
            sink = archive.open_record(REF, "email", "p12345", "2026-03-01T09:00:00Z", kind)
            sink.write(body)
            sink.close()
        archive.close()
    return ident


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def audit_actions(data: Path) -> list[dict]:
    return [json.loads(x) for x in (data / "audit" / "audit.jsonl").read_text().splitlines()]


def get(s3: S3Server, bucket: str, key: str) -> bytes:
    return bytes(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def no_staging_left(data: Path) -> bool:
    return not any(p.name.startswith(".archive-stage-") for p in data.iterdir())


def test_sealed_segments_are_uploaded_verified_and_read_back_like_local(
    buckets: S3Server, gw: Lbm, tmp_path: Path
) -> None:
    ident = make_archive(gw.data_dir, tmp_path)
    local_dir = gw.data_dir / "archive" / REF
    manifests = {n: json.loads((local_dir / f"{n:06d}.manifest.json").read_bytes()) for n in (1, 2)}
    before_verify = gw.inproc("archive", "verify", REF, "--json")
    before_records = gw.inproc("archive", "records", REF, "--json").stdout
    assert gw.inproc("archive", "export-raw", REF, "--identity", str(ident),
                     "--out", str(tmp_path / "a")).returncode == 0  # fmt: skip

    configure(gw, buckets.endpoint, "gw1")
    up = gw("archive", "upload", "--json", check=True)
    assert json.loads(up.stdout)["uploaded"] == 2 and json.loads(up.stdout)["pending"] == 0

    # in the bucket, hashes as signed; the local ciphertext and index are gone
    objects = buckets.keys(ARCH, f"gw1/{REF}/")
    for n in (1, 2):
        name = f"gw1/{REF}/{n:06d}"
        assert {f"{name}.age", f"{name}.index.jsonl", f"{name}.manifest.json"} <= set(objects)
        data = get(buckets, ARCH, f"{name}.age")
        assert hashlib.sha256(data).hexdigest() == manifests[n]["ciphertext_sha256"]
        assert CONTENT not in data  # ciphertext only
        assert not (local_dir / f"{n:06d}.age").exists()
        assert not (local_dir / f"{n:06d}.index.jsonl").exists()
    assert any(k.startswith(f"gw1/{REF}/heads/") for k in objects)
    # the keys went to the keystore bucket, never to the archive bucket
    assert not [k for k in buckets.keys(ARCH) if k.endswith(("auth.age", "auth.pub"))]
    assert set(buckets.keys(KEYS, f"gw1/{REF}/")) == {
        f"gw1/{REF}/{n}" for n in ("auth.age", "auth.pub", "000001.age", "000002.age")
    }
    assert [e["fields"]["segment"] for e in audit_actions(gw.data_dir)
            if e["action"] == "archive_upload"] == [f"{REF}/000001", f"{REF}/000002"]  # fmt: skip

    # verify, records and export from the object store: the same as from local disk
    after = gw("archive", "verify", REF, "--json", check=True)
    assert json.loads(after.stdout) == json.loads(before_verify.stdout)
    assert gw.inproc("archive", "records", REF, "--json").stdout == before_records
    gw("archive", "export-raw", REF, "--identity", str(ident), "--out", str(tmp_path / "b"),
       check=True)  # fmt: skip
    assert tree(tmp_path / "b") == tree(tmp_path / "a") != {}
    assert no_staging_left(gw.data_dir)

    # a second pass has nothing to do; a new segment gets a new number, never an old one
    assert json.loads(gw.inproc("archive", "upload", "--json").stdout)["uploaded"] == 0
    paths = DataPaths(gw.data_dir)
    key = signing.load(paths)
    archive = Archive(paths, key, Clock(), audit=AuditLog(paths, key, Clock(), witness=False))
    sink = archive.open_record(REF, "email", "p12345", "2026-03-01T10:00:00Z", "message")
    assert sink.record_id.startswith(f"{REF}/000003/")
    sink.write(CONTENT)
    sink.close()
    archive.close()
    assert gw.inproc("archive", "upload").returncode == 0
    assert gw.inproc("archive", "verify", REF).stdout.startswith("archive ok")

    # an object altered in the store is caught by verify
    c = buckets.client()
    c.delete_object(Bucket=ARCH, Key=f"gw1/{REF}/000002.index.jsonl")
    bad = gw.inproc("archive", "verify", REF)
    assert bad.returncode == 1 and "000002" in bad.stdout
    assert no_staging_left(gw.data_dir)


def test_store_down_at_seal_keeps_the_local_copy_until_it_comes_back(
    buckets: S3Server, gw: Lbm, tmp_path: Path
) -> None:
    make_archive(gw.data_dir, tmp_path, segments=1)
    local = gw.data_dir / "archive" / REF / "000001.age"
    with Outage(buckets.endpoint) as gate:
        configure(gw, gate.endpoint, "gw-outage")
        gate.down()
        res = gw.inproc("archive", "upload", "--json")
        assert res.returncode == 1 and json.loads(res.stdout)["pending"] == 1
        assert local.exists() and buckets.keys(ARCH, "gw-outage/") == []
        state = json.loads((gw.data_dir / "run" / "archive-upload.json").read_bytes())
        assert state["pending"] == 1 and state["failures_total"] >= 1
        gate.up()
        out = gw("housekeeping", "run", "--once", check=True)  # the daemon's upload tick
        last = json.loads(out.stdout.splitlines()[-1])  # the pass's result after its log lines
        assert last["archive_upload"]["uploaded"] == 1
    assert not local.exists()
    assert f"gw-outage/{REF}/000001.age" in buckets.keys(ARCH, "gw-outage/")
    state = json.loads((gw.data_dir / "run" / "archive-upload.json").read_bytes())
    assert state["pending"] == 0 and not state["failing"]


def test_an_object_with_other_content_is_never_overwritten(
    buckets: S3Server, gw: Lbm, tmp_path: Path
) -> None:
    make_archive(gw.data_dir, tmp_path, segments=1)
    configure(gw, buckets.endpoint, "gw-conflict")
    foreign = b"someone else's segment"
    buckets.client().put_object(Bucket=ARCH, Key=f"gw-conflict/{REF}/000001.age", Body=foreign)
    res = gw.inproc("archive", "upload", "--json")
    assert res.returncode == 1 and json.loads(res.stdout)["conflicts"] == 1
    assert get(buckets, ARCH, f"gw-conflict/{REF}/000001.age") == foreign
    assert (gw.data_dir / "archive" / REF / "000001.age").exists()  # kept
    conflicts = [e for e in audit_actions(gw.data_dir) if e["action"] == "archive_upload_conflict"]
    assert conflicts and conflicts[0]["refs"] == [REF]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (VERSIONED, "versioning enabled"),
        (ARCH, "same bucket as [store] archive_root"),
    ],
)
def test_a_keystore_that_would_keep_shredded_keys_is_refused(
    buckets: S3Server, gw: Lbm, tmp_path: Path, keys: str, expected: str
) -> None:
    make_archive(gw.data_dir, tmp_path, segments=1)
    configure(gw, buckets.endpoint, "gw-refused", keys=keys)
    start = gw.inproc("housekeeping", "run", "--once")
    assert start.returncode == 2 and expected in start.stderr
    assert "[store] keystore_root" in start.stderr
    res = gw.inproc("archive", "upload")
    assert res.returncode == 1 and expected in res.stdout
    assert (gw.data_dir / "archive" / REF / "000001.age").exists()
    assert buckets.keys(ARCH, "gw-refused/") == [] and buckets.keys(keys, "gw-refused/") == []
    assert ACCESS_KEY not in res.stdout + res.stderr and SECRET_KEY not in res.stdout + res.stderr


@pytest.fixture
def uploaded(buckets: S3Server, gw: Lbm, tmp_path: Path) -> Iterator[tuple[Lbm, Path, KeyStore]]:
    ident = make_archive(gw.data_dir, tmp_path, segments=2)
    settings = configure(gw, buckets.endpoint, f"gw-{tmp_path.name[-12:].lower()}")
    assert gw.inproc("archive", "upload").returncode == 0
    yield gw, ident, KeyStore(DataPaths(gw.data_dir, store=settings))


def test_shredding_deletes_the_key_object_and_the_segment_stays_unreadable(
    buckets: S3Server, uploaded: tuple[Lbm, Path, KeyStore], tmp_path: Path
) -> None:
    gw, ident, keystore = uploaded
    inv = ident.read_text()
    auth = keystore.unwrap_authorisation(REF, inv)
    assert keystore.destroy_segment(REF, 1)
    prefix = keystore.paths.store_settings.keystore_root.rsplit("/", 1)[1]
    assert f"{prefix}/{REF}/000001.age" not in buckets.keys(KEYS, prefix)
    assert f"{prefix}/{REF}/000002.age" in buckets.keys(KEYS, prefix)
    with pytest.raises(KeyError_, match="destroyed"):
        keystore.unwrap_segment(REF, 1, auth)
    res = gw.inproc(
        "archive", "export-raw", REF, "--identity", str(ident), "--out", str(tmp_path / "x")
    )
    assert res.returncode == 0 and "000001: key destroyed" in res.stdout
    assert (tmp_path / "x" / REF / "000002" / "1.eml").read_bytes() == CONTENT
    assert not (tmp_path / "x" / REF / "000001").exists()
    # the ciphertext is still in the (write-once) bucket, but nothing can open it
    assert f"{prefix}/{REF}/000001.age" in buckets.keys(ARCH, prefix)
    # the whole authorisation: its wrapped key object goes too
    assert keystore.destroy_authorisation(REF)
    left = {k.rsplit("/", 1)[1] for k in buckets.keys(KEYS, f"{prefix}/{REF}/")}
    assert left - {""} == set()  # every key object of REF ("" is pyarrow's directory marker)
    with pytest.raises(KeyError_):
        keystore.unwrap_authorisation(REF, inv)


def test_a_key_missing_locally_is_read_from_the_keystore_bucket(
    buckets: S3Server, uploaded: tuple[Lbm, Path, KeyStore], tmp_path: Path
) -> None:
    """A replaced gateway (or a lost keystore/) still opens its archive from the key bucket."""
    gw, ident, _ = uploaded
    (gw.data_dir / "keystore" / REF / "000002.age").unlink(missing_ok=True)
    (gw.data_dir / "keystore" / REF / "auth.age").unlink()
    res = gw.inproc("archive", "export-raw", REF, "--identity", str(ident),
                    "--out", str(tmp_path / "y"), "--segment", "2")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert any(BIG in p.read_bytes() for p in (tmp_path / "y" / REF / "000002").iterdir())


def test_a_shred_during_an_outage_is_finished_by_the_next_upload_pass(
    buckets: S3Server, uploaded: tuple[Lbm, Path, KeyStore]
) -> None:
    gw, ident, keystore = uploaded
    prefix = keystore.paths.store_settings.keystore_root.rsplit("/", 1)[1]
    with Outage(buckets.endpoint) as gate:
        settings = dataclasses.replace(
            keystore.paths.store_settings,
            s3=dataclasses.replace(keystore.paths.store_settings.s3, endpoint=gate.endpoint),
        )
        paths = DataPaths(gw.data_dir, store=settings)
        key = signing.load(paths)
        audit = AuditLog(paths, key, Clock(), witness=False)
        cut_off = KeyStore(paths, audit=audit, actor="tester")
        gate.down()
        assert cut_off.destroy_segment(REF, 2)  # the local copy is shredded at once
    assert f"{prefix}/{REF}/000002.age" in buckets.keys(KEYS, prefix)  # the copy is not, yet
    shred = [e for e in audit_actions(gw.data_dir) if e["action"] == "key_destroy"][-1]
    assert shred["fields"]["keystore_root"] == "pending"
    # meanwhile nothing reads the bucket's copy: the local tombstone wins
    auth = keystore.unwrap_authorisation(REF, ident.read_text())
    with pytest.raises(KeyError_, match="destroyed"):
        keystore.unwrap_segment(REF, 2, auth)
    assert gw.inproc("archive", "upload").returncode == 0
    assert f"{prefix}/{REF}/000002.age" not in buckets.keys(KEYS, prefix)


def test_retention_purge_deletes_every_key_object_of_the_archive(
    buckets: S3Server, uploaded: tuple[Lbm, Path, KeyStore]
) -> None:
    from appliance.evidence.retention_apply import destroy_keys, remove_files

    _, _, keystore = uploaded
    prefix = keystore.paths.store_settings.keystore_root.rsplit("/", 1)[1]
    assert len(buckets.keys(KEYS, f"{prefix}/{REF}/")) == 4
    assert destroy_keys(keystore.paths, REF) == 3  # auth.age and two segment keys here
    assert [k for k in buckets.keys(KEYS, f"{prefix}/{REF}/") if not k.endswith("/")] == []
    remove_files(keystore.paths, REF)  # the write-once bucket keeps the (unreadable) copies
    assert not (keystore.paths.archive / REF).exists()


def test_a_rewrap_reaches_the_keystore_bucket_so_a_removed_holder_cannot_use_its_copy(
    buckets: S3Server, uploaded: tuple[Lbm, Path, KeyStore]
) -> None:
    gw, ident, keystore = uploaded
    prefix = keystore.paths.store_settings.keystore_root.rsplit("/", 1)[1]
    old_holder = ident.read_text()
    new_secret, new_public = age.generate()
    keystore.rewrap(REF, old_holder, [new_public])
    remote = get(buckets, KEYS, f"{prefix}/{REF}/auth.age")
    assert remote == (gw.data_dir / "keystore" / REF / "auth.age").read_bytes()
    with pytest.raises(age.AgeError):
        age.decrypt_bytes(remote, age.parse_identity_file(old_holder))
    assert age.decrypt_bytes(remote, [new_secret])
