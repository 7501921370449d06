"""Issue 19 attacked, configuration side: credentials written into a root or endpoint URI,
local roots that overlap the data directory, plain http to a store on the network. In
process (the config loader) plus one real `lbm config check`; no S3 server is needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lbm_testing import Lbm
from s3server import set_store

from appliance.config import ConfigError

ARCH = "rt-arch"
URI_SECRET = "uriSECRETnever2show"


# -- credentials ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value"),
    [
        # pyarrow's own URI form carries the keys; an operator may well copy it from its docs
        ("metadata_root", f"s3://AKIAURIKEY:{URI_SECRET}@lbm-meta/force"),
        ("archive_root", f"s3://lbm-arch/gw1?access_key=AKIAURIKEY&secret_key={URI_SECRET}"),
        ("keystore_root", f"https://AKIAURIKEY:{URI_SECRET}@minio.example/keys"),
        ("endpoint", f"http://AKIAURIKEY:{URI_SECRET}@127.0.0.1:9"),
        ("endpoint", f"AKIAURIKEY:{URI_SECRET}@127.0.0.1:9"),
        ("endpoint", f"https://minio.example/?X-Amz-Signature={URI_SECRET}"),
    ],
)
def test_credentials_written_into_a_uri_are_refused_and_never_echoed(
    gw: Lbm, key: str, value: str
) -> None:
    """HOLE (fixed): the refusal quoted the value, so `lbm config check`, every command that
    loads the config, and the daemons' journal printed the secret."""
    set_store(gw.data_dir, **{key: value})
    for argv in (("config", "show", "--json"), ("status", "--json")):
        with pytest.raises(ConfigError) as refused:  # `lbm` prints it and exits 2
            gw.inproc(*argv)
        assert f"[store] {key}" in str(refused.value) and "credentials" in str(refused.value)
        assert URI_SECRET not in str(refused.value)
    if key == "metadata_root":  # the real CLI once: exit 2, the message on stderr
        res = gw("config", "check")
        assert res.returncode == 2 and "credentials" in res.stderr
        assert URI_SECRET not in res.stdout + res.stderr


def test_credentials_in_an_aws_endpoint_variable_are_never_echoed(gw: Lbm) -> None:
    """Not a hole: the same secret in AWS_ENDPOINT_URL (not the config) is refused, not shown."""
    set_store(gw.data_dir, archive_root=f"s3://{ARCH}/gw1", keystore_root="s3://rt-envkeys/gw1")
    env = {"AWS_ENDPOINT_URL": f"http://AKIAURIKEY:{URI_SECRET}@127.0.0.1:9"}
    res = gw("archive", "upload", "--json", env=env)
    assert res.returncode == 1 and URI_SECRET not in res.stdout + res.stderr


# -- roots that escape -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("metadata_root", "/"),
        ("metadata_root", "DATA"),
        ("metadata_root", "DATA/keys"),
        ("metadata_root", "DATA/archive"),
        ("metadata_root", "PARENT"),
        ("archive_root", "DATA/keys"),
        ("archive_root", "DATA/metadata"),
        ("keystore_root", "DATA/archive/x"),
    ],
)
def test_a_local_root_overlapping_the_data_directory_is_refused(
    gw: Lbm, key: str, where: str
) -> None:
    """HOLE (fixed): a local metadata_root of `/`, the data directory or DATA/keys was
    accepted. `lbm search` confines DuckDB to the metadata root (its second sandbox layer),
    which then covered the gateway's signing key and the wrapped keys; the writers wrote
    their hive folders into the gateway's own folders."""
    data = str(gw.data_dir)
    value = where.replace("DATA", data).replace("PARENT", str(gw.data_dir.parent))
    set_store(gw.data_dir, **{key: value})
    with pytest.raises(ConfigError, match=rf"\[store\] {key} .*data directory"):
        gw.inproc("config", "show", "--json")


@pytest.mark.parametrize("where", ["DATA/metadata", "DATA/metadata/sub", "ELSEWHERE"])
def test_a_local_metadata_root_of_its_own_is_accepted(gw: Lbm, tmp_path: Path, where: str) -> None:
    value = where.replace("DATA", str(gw.data_dir)).replace("ELSEWHERE", str(tmp_path / "m"))
    set_store(gw.data_dir, metadata_root=value)
    assert gw.inproc("config", "show", "--json").returncode == 0


@pytest.mark.parametrize(
    ("endpoint", "refused"),
    [
        ("http://10.20.0.5:9000", True),
        ("http://minio.force.example:9000", True),
        ("https://minio.force.example:9000", False),
        ("http://127.0.0.1:9000", False),
        ("http://[::1]:9000", False),
    ],
)
def test_plain_http_to_another_machine_is_refused(gw: Lbm, endpoint: str, refused: bool) -> None:
    """HOLE (fixed): an `http://` endpoint on the network was accepted, so every metadata row
    (principals, client addresses, hosts visited) crossed the network in clear; the project
    has no insecure switch for upstream TLS. Loopback (a local store, the tests) stays."""
    set_store(gw.data_dir, endpoint=endpoint)
    if refused:
        with pytest.raises(ConfigError, match=r"\[store\] endpoint: .*https://"):
            gw.inproc("config", "show", "--json")
    else:
        assert gw.inproc("config", "show", "--json").returncode == 0
