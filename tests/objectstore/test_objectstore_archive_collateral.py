"""Collateral removal on an archive already uploaded to a write-once bucket (issue 19): the
record is found through the store's index copy, the segment is read back (verified), the
replacement is a NEW segment uploaded by the next pass, the old segment key is deleted from
the keystore bucket, and no object in the archive bucket is ever rewritten."""

from __future__ import annotations

from pathlib import Path

from s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server

from store import agefile as age
from store import signing
from store.archive import Archive
from store.archive_stage import staged_paths
from store.archive_upload import ArchiveUploader
from store.audit import AuditLog
from store.clock import Clock
from store.collateral import remove_record
from store.framing import PlainStream, open_segment, read_records
from store.keys import KeyStore
from store.manifest import verify_all
from store.objectstore import S3Settings, StoreSettings
from store.paths import DataPaths

REF = "AUTH-COLL-S3"


def test_collateral_on_an_uploaded_segment_writes_a_replacement_and_rewrites_nothing(
    s3: S3Server, tmp_path: Path
) -> None:
    s3.make_bucket("coll-arch", object_lock=True)
    s3.make_bucket("coll-keys")
    data = tmp_path / "data"
    store = StoreSettings(
        metadata_root=str(data / "metadata"),
        archive_root="s3://coll-arch/gw1",
        keystore_root="s3://coll-keys/gw1",
        s3=S3Settings(s3.endpoint, REGION, ACCESS_KEY, SECRET_KEY),
    )
    paths = DataPaths(data, store=store)
    key = signing.create(paths, "test gateway")
    audit = AuditLog(paths, key, Clock(), witness=False)
    secret, public = age.generate()
    ident = age.identity_file_text(secret)
    KeyStore(paths).create_authorisation_key(REF, [public])
    archive = Archive(paths, key, Clock(), audit=audit)
    ids = []
    for body in (b"the subject's own mail", b"COLLATERAL-third-party-mail"):
        sink = archive.open_record(REF, "email", "p12345", "2026-03-01T09:00:00Z", "message")
        sink.write(body)
        ids.append(sink.close())
    archive.close()
    assert ArchiveUploader(paths, audit=audit).run().counts()["uploaded"] == 1
    client = s3.client()
    etags = {k: client.head_object(Bucket="coll-arch", Key=k)["ETag"] for k in s3.keys("coll-arch")}
    assert not (paths.archive / REF / "000001.age").exists()

    removal = remove_record(paths, key, Clock(), audit, "root", REF, ids[1], ident,
                            proposal=1, proposer="a", approver="b")  # fmt: skip
    assert (removal.old_segment, removal.new_segment) == (1, 2)
    assert "gw1/AUTH-COLL-S3/000001.age" not in s3.keys("coll-keys")  # shredded there too
    assert "gw1/AUTH-COLL-S3/000002.age" not in s3.keys("coll-keys")  # not yet mirrored

    done = ArchiveUploader(paths, audit=audit).run()
    assert done.counts() == {**done.counts(), "uploaded": 2, "failed": 0, "pending": 0}
    after = {k: client.head_object(Bucket="coll-arch", Key=k)["ETag"] for k in s3.keys("coll-arch")}
    assert {k: after[k] for k in etags} == etags  # nothing rewritten in place
    assert "gw1/AUTH-COLL-S3/000002.age" in after
    assert not (paths.archive / REF / "000001.age").exists()
    assert not (paths.archive / REF / "000002.age").exists()

    with staged_paths(paths, [REF]) as staged:
        report = verify_all(staged.archive, signing.load_public_keys(paths), REF)
        assert report.amended and not [p for p in report.problems if "000002" in p]
        reader, fh = open_segment(staged, REF, 2, ident)
        with fh:
            records = read_records(PlainStream(reader.chunks()))
    assert [r.data for r in records] == [b"the subject's own mail"]
