"""Benchmark: `lbm evidence open` throughput vs plain `age -d` of the same segments; peak RSS.

Run: .venv/bin/python bench/bench_export.py [--mb 2048] [--record-kib 1024] [--dir DIR]

Builds a real data directory (`lbm init`, an investigator with a signing key, a grant), fills
REF's archive with MB megabytes of email records through the archive writer, bundles it with
`lbm archive bundle`, then opens the bundle with `lbm evidence open` (decryption of the wrapped
keys and segments, framing, the export files, MANIFEST.json and its signature, every file
fsynced) and, in the same run, decrypts the same segments with Debian's `age -d` (each segment
key unwrapped in memory and given to age in a 0600 file) and fsyncs its output (`sync FILE`),
both writing to DIR. Prints MB/s of each and the ratio (floor 0.5x), and age without the fsync
for reference (page cache only: the disk's write speed is then not in it). Then repeats at a
quarter of the size and prints each `lbm evidence open`'s peak RSS (from wait4): memory should
be flat in the archive's size (records stream through).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from store import agefile as age  # noqa: E402
from store import signing  # noqa: E402
from store.archive import Archive  # noqa: E402
from store.clock import Clock  # noqa: E402
from store.keys import KeyStore  # noqa: E402
from store.paths import DataPaths  # noqa: E402

REF = "ca1-bench-0001"


def lbm(data: Path, *args: str, stdin: str | None = None) -> str:
    cmd = [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(data), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, input=stdin, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"lbm {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def timed_child(cmd: list[str], stdin: str | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    if stdin:
        proc.stdin.write(stdin)
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{err}")
    return elapsed, usage.ru_maxrss


def build(root: Path, mb: int, record_kib: int) -> tuple[Path, Path, Path, Path, int]:
    """A data dir with MB of records for REF; returns (data, identity, ssh key, signers, bytes)."""
    data = root / "data"
    lbm(data, "init")
    secret, public = age.generate()
    identity = root / "inv.key"
    identity.write_text(age.identity_file_text(secret))
    identity.chmod(0o600)
    ssh = root / "inv_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh)], check=True)
    lbm(data, "keys", "investigator", "add", "inv1", public, "--principal", "p500", "--login",
        "root", "--sign-key", f"{ssh}.pub")  # fmt: skip
    lbm(data, "officer", "add", "p100", "--name", "Pat Hops", "--role",
        "head_of_professional_standards", "--rank", "superintendent", "--from",
        "2000-01-01T00:00:00Z")  # fmt: skip
    lbm(data, "auth", "grant", "--ref", REF, "--subject", "p12345", "--case-type", "criminal",
        "--purpose", "preventing_or_detecting_crime", "--channel", "email", "--officer", "p100",
        "--necessity", "n", "--proportionality", "p", "--collateral", "c",
        "--ripa-considered", "yes", "--investigator", "inv1")  # fmt: skip
    status = json.loads(lbm(data, "status", "--json"))
    signers = root / "gateway.allowed_signers"
    signers.write_text(status["allowed_signers"] + "\n")
    paths = DataPaths(data)
    archive = Archive(paths, signing.load(paths), Clock(), segment_max_bytes=256 << 20)
    piece = os.urandom(64 * 1024)
    head = b"From: p12345@force.example\r\nSubject: bench\r\n\r\n"
    total = 0
    while total < mb << 20:
        sink = archive.open_record(REF, "email", "p12345", "2026-03-02T10:00:00Z", "message")
        sink.write(head)
        for _ in range(record_kib // 64):
            sink.write(piece)
        sink.close()
        total += len(head) + (record_kib // 64) * len(piece)
    archive.close()
    return data, identity, ssh, signers, total


def run(root: Path, mb: int, record_kib: int) -> dict[str, float]:
    data, identity, ssh, signers, total = build(root, mb, record_kib)
    bundle = root / "bundle"
    start = time.perf_counter()
    lbm(data, "archive", "bundle", REF, "--out", str(bundle))
    bundle_s = time.perf_counter() - start
    out = root / "opened"
    open_s, rss = timed_child(
        [sys.executable, "-m", "appliance.cli.main", "evidence", "open", str(bundle),
         "--identity", "-", "--allowed-signers", str(signers), "--sign-key", str(ssh),
         "--out", str(out), "--no-progress"],
        stdin=identity.read_text(),
    )  # fmt: skip
    shutil.rmtree(out)
    # the same segments with Debian's age, each segment key unwrapped in memory first
    keystore = KeyStore(DataPaths(bundle))
    auth_key = keystore.unwrap_authorisation(REF, identity.read_text())
    numbers = sorted(int(p.name[:-4]) for p in (bundle / "archive" / REF).glob("*[0-9].age"))
    age_s = sync_s = 0.0
    keyfile = root / "seg.key"
    for number in numbers:
        keyfile.write_text(age.identity_file_text(keystore.unwrap_segment(REF, number, auth_key)))
        keyfile.chmod(0o600)
        seg = bundle / "archive" / REF / f"{number:06d}.age"
        elapsed, _ = timed_child(["age", "-d", "-i", str(keyfile), "-o", str(root / "plain"),
                                  str(seg)])  # fmt: skip
        age_s += elapsed
        sync_s += timed_child(["sync", str(root / "plain")])[0]  # fsync, as open does
        (root / "plain").unlink()
    keyfile.unlink()
    mbytes = total / 1e6
    return {"mb": mbytes, "bundle_s": bundle_s, "open_s": open_s, "age_s": age_s,
            "sync_s": sync_s, "rss": rss}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=2048, help="archive size (default 2048 MB)")
    parser.add_argument("--record-kib", type=int, default=1024, help="record size (KiB)")
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: tmp)")
    args = parser.parse_args()
    if shutil.which("age") is None or shutil.which("ssh-keygen") is None:
        raise SystemExit("needs `age` and `ssh-keygen` (Debian packages age, openssh-client)")
    results = []
    for mb in (args.mb, max(1, args.mb // 4)):
        root = Path(tempfile.mkdtemp(prefix="lbm-bench-export-", dir=args.dir))
        try:
            results.append(run(root, mb, args.record_kib))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    big, small = results
    open_rate = big["mb"] / big["open_s"]
    age_rate = big["mb"] / (big["age_s"] + big["sync_s"])
    ratio = open_rate / age_rate
    print(f"archive {big['mb']:.0f} MB, records {args.record_kib} KiB")
    print(f"lbm archive bundle : {big['mb'] / big['bundle_s']:8.1f} MB/s (verify + copy)")
    print(f"lbm evidence open  : {open_rate:8.1f} MB/s")
    print(f"age -d + fsync     : {age_rate:8.1f} MB/s (baseline: output made durable, as open's)")
    print(f"age -d, no fsync   : {big['mb'] / big['age_s']:8.1f} MB/s (page cache only)")
    print(f"ratio open/age     : {ratio:8.2f}x (floor 0.5x) {'PASS' if ratio >= 0.5 else 'FAIL'}")
    print(f"peak RSS of open   : {big['rss'] / 1024:.1f} MiB at {big['mb']:.0f} MB, "
          f"{small['rss'] / 1024:.1f} MiB at {small['mb']:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
