"""`[store]` roots: local paths and s3:// URIs, credentials never shown, objects whole or absent."""

from __future__ import annotations

import pytest
from lbm_testing import Lbm
from s3server import ACCESS_KEY, REGION, SECRET_KEY, Outage, S3Server, set_store

from store import StoreError
from store.objectstore import S3Settings, check_root, open_root, parse_s3_uri


def settings(s3: S3Server, endpoint: str | None = None) -> S3Settings:
    return S3Settings(
        endpoint=endpoint or s3.endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )


@pytest.mark.parametrize(
    "bad",
    [
        "s3://",
        "s3://A_Bucket/x",
        "s3://ok-bucket/../other",
        "s3://ok-bucket/a//b/..",
        "relative/path",
        "gs://bucket/x",
        "s3://ok-bucket/pre fix",
    ],
)
def test_bad_roots_are_refused_with_what_is_wrong(bad: str) -> None:
    with pytest.raises(StoreError, match=r"bucket|prefix|absolute|only s3|not an s3"):
        check_root(bad)


def test_uri_parts() -> None:
    assert parse_s3_uri("s3://lbm-meta/force/gw1/") == ("lbm-meta", "force/gw1")
    assert parse_s3_uri("s3://lbm-meta") == ("lbm-meta", "")


def test_settings_repr_never_shows_credentials() -> None:
    shown = repr(S3Settings(access_key_id="AKIAEXAMPLE", secret_access_key="hunter2-secret"))
    assert "AKIAEXAMPLE" not in shown and "hunter2" not in shown


def test_an_object_written_through_the_root_is_readable_and_whole(s3: S3Server) -> None:
    s3.make_bucket("lbm-roots")
    root = open_root("s3://lbm-roots/gw1", settings(s3))
    assert root.remote and root.bucket == "lbm-roots"
    with root.fs.open_output_stream(root.path("stream=web", "a.bin")) as out:
        out.write(b"x" * 100_000)
    assert s3.keys("lbm-roots") == ["gw1/stream=web/a.bin"]
    with root.fs.open_input_stream(root.path("stream=web", "a.bin")) as f:
        assert f.read() == b"x" * 100_000


def test_an_unreachable_store_raises_instead_of_hanging(s3: S3Server) -> None:
    s3.make_bucket("lbm-outage")
    with Outage(s3.endpoint) as gate:
        root = open_root(
            "s3://lbm-outage/gw1", settings(s3, gate.endpoint), connect_timeout=1, request_timeout=2
        )
        gate.down()
        # pyarrow raises OSError for S3 transport failures
        with pytest.raises(OSError), root.fs.open_output_stream(root.path("x.bin")) as out:
            out.write(b"data")
        gate.up()
        with root.fs.open_output_stream(root.path("x.bin")) as out:
            out.write(b"data")
        assert s3.keys("lbm-outage") == ["gw1/x.bin"]


def test_config_show_redacts_credentials_and_check_names_bad_roots(lbm: Lbm) -> None:
    set_store(
        lbm.data_dir,
        metadata_root="s3://lbm-meta/gw1",
        endpoint="http://127.0.0.1:9",
        access_key_id="AKIASHOWNEVER",
        secret_access_key="s3cr3t-never-shown",
    )
    shown = (
        lbm("config", "show", check=True).stdout
        + lbm("config", "show", "--json", check=True).stdout
    )
    assert "s3cr3t-never-shown" not in shown and "AKIASHOWNEVER" not in shown
    assert "<redacted>" in shown and "s3://lbm-meta/gw1" in shown
    set_store(lbm.data_dir, metadata_root="s3://Bad_Bucket/gw1")
    res = lbm("config", "check")
    assert res.returncode == 2 and "[store] metadata_root" in res.stderr and "bucket" in res.stderr
