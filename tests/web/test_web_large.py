"""100 MB each way for a subject through the real `lbm proxy run`: the client gets every byte,
the archive decrypted with the investigator's identity gives back the same SHA-256, and the
proxy's peak RSS (VmHWM) stays under 200 MiB, because bodies stream through in records of about
1 MiB and are never held whole.

Download: curl from the upstream's `/bytes/N` over HTTP/2 (the digest is `sha256_of(N, seed)`).
Upload: curl streams a 100 MB file to `/upload` over HTTP/1.1, which answers the digest it read.

Why the upload is HTTP/1.1: mitmproxy 11's HTTP/2 layer acknowledges a client's DATA frames as
soon as it reads them (proxy/layers/http/_http2.py, `acknowledge_received_data`), so an
intercepted HTTP/2 upload faster than the upstream reads it is buffered in the proxy whatever
the addons do: measured here with a bare mitmproxy `Master` intercepting, no lbm addons, a
100 MB HTTP/2 upload raised the peak RSS by about 100 MB (HTTP/1.1: flat). Not ours to fix
without patching mitmproxy; the 100 MB HTTP/2 download stays flat.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from lbm_testing import Lbm
from web_archive_support import (
    REF,
    SUBJECT_IP,
    ProxyDaemon,
    archive_items,
    body_sha256,
    client_bundle,
    curl,
    setup_subject,
)
from web_upstream import Upstream, deterministic_bytes, sha256_of

from addons import archive_records as rec

SIZE = 100 * 1000 * 1000
RSS_LIMIT_MIB = 200


@pytest.mark.slow
def test_100mb_download_and_upload_byte_exact_with_bounded_memory(
    web_lbm: Lbm, upstream: Upstream, tmp_path: Path
) -> None:
    identity = setup_subject(web_lbm, tmp_path, upstream)
    upload = tmp_path / "upload.bin"
    with upload.open("wb") as fh:
        for chunk in deterministic_bytes(SIZE, "up"):
            fh.write(chunk)
    with ProxyDaemon(web_lbm, tmp_path / "logs") as proxy:
        bundle = client_bundle(web_lbm.data_dir, upstream, tmp_path / "bundle.pem")
        down = curl(proxy, bundle, SUBJECT_IP, "--http2", "-o", str(tmp_path / "down.bin"),
                    "-w", "%{http_code} %{http_version}",
                    upstream.url(f"/bytes/{SIZE}?seed=down"))  # fmt: skip
        assert down.returncode == 0 and down.stdout == b"200 2", (down.stdout, down.stderr)
        up = curl(proxy, bundle, SUBJECT_IP, "--http1.1", "--data-binary", f"@{upload}",
                  "-H", "Content-Type: application/octet-stream",
                  upstream.url("/upload"))  # fmt: skip
        assert up.returncode == 0, up.stderr
        peak = proxy.vmhwm_mib()
    assert json.loads(up.stdout) == {"length": SIZE, "sha256": sha256_of(SIZE, "up")}
    got = hashlib.sha256()
    with (tmp_path / "down.bin").open("rb") as fh:
        while block := fh.read(1 << 20):
            got.update(block)
    assert got.hexdigest() == sha256_of(SIZE, "down")

    items = archive_items(web_lbm.data_dir, REF, identity, keep=0)
    starts = [n for n, i in enumerate(items) if i.header["kind"] == rec.REQUEST_HEAD]
    assert len(starts) == 2  # the download's records, then the upload's
    download, upload_items = items[: starts[1]], items[starts[1] :]
    down_ids = {i.header["id"] for i in download if i.header["kind"] == rec.RESPONSE_BODY}
    up_ids = {i.header["id"] for i in upload_items if i.header["kind"] == rec.REQUEST_BODY}
    assert body_sha256(web_lbm.data_dir, REF, identity, down_ids) == (sha256_of(SIZE, "down"), SIZE)
    assert body_sha256(web_lbm.data_dir, REF, identity, up_ids) == (sha256_of(SIZE, "up"), SIZE)
    assert 90 <= len(up_ids) <= 110  # about 1 MiB per record
    assert peak < RSS_LIMIT_MIB, f"proxy peak RSS {peak:.0f} MiB"
    print(f"proxy peak RSS {peak:.0f} MiB, {len(items)} records")
