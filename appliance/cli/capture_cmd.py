"""`lbm capture`: replay capture files, or capture live from an interface.

`lbm capture replay FILE...` runs each file through the packet pipeline (writer `replay`) and
prints, per file and in total, packets, flows and bad packets by kind (`--json` for a
machine-readable summary: the totals, and `files` with each file's). A file that cannot be
read (missing, a directory, a FIFO, socket or device: only regular files are read) or whose
header is broken gets one clear error line naming it; so does a file already replayed into
this data directory (`capture.read.replayed`: same SHA-256 and size, decided before the first row
from the size and first and last MiB; the SHA-256 is computed meanwhile by a child process),
unless `--again`. The other files are still processed and the exit status is 1 at the end.
Decisions use the capture's own timestamps. `--json` adds `timing`: seconds from process start
(`LBM_T0`, nanoseconds since the epoch, if set) to the first batch in the pipeline and to the
end, and the final flush and Parquet publication (docs/capture-io.md).

`lbm capture live --interface IF` is the capture daemon (writer `capture-IF`): it runs until
SIGTERM or SIGINT, then flushes every flow and exits 0.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

import click

from appliance.cli.app import (
    EXIT_FAIL,
    App,
    emit,
    exit_without_teardown,
    fail,
    pass_app,
    run_guarded,
)
from appliance.cli.capture_process import (
    EarlyHash,
    collect_less,
    one_blas_thread,
    pacer,
    timing_summary,
)
from appliance.cli.textsafe import safe
from capture import CaptureError

if TYPE_CHECKING:
    from capture.pipeline import Pipeline
    from capture.subjects.bypassed import BypassedWeb

# Imports are lazy (inside the functions that need them): `lbm capture replay` reaches its
# first packet before pyarrow, the metrics and the live-capture modules are loaded.

if TYPE_CHECKING:
    from capture.subjects import SubjectLimits


def build_pipeline(app: App, writer: str, interface: str | None) -> tuple[Pipeline, Any]:
    """Pipeline wired to this data directory: policy snapshots, identity, archive, audit."""
    from appliance.cli.policy_source import snapshot_source
    from capture.flow.table import FlowConfig
    from capture.pipeline import Pipeline
    from store.archive import Archive
    from store.audit import Action

    app.require_initialised()
    source = snapshot_source(app, daemon=interface is not None)  # replay: no run/policy.json
    archive = Archive(
        app.paths, app.gateway_key, app.clock, audit=app.audit, actor=app.actor,
        segment_max_bytes=app.config["archive.segment_max_bytes"],
    )  # fmt: skip
    archive.recover()  # segments cut off by an earlier crash: sealed as truncated, audited

    def gap(ref: str, reason: str) -> None:
        app.audit.append(
            Action.CAPTURE_GAP,
            app.actor,
            refs=(ref,),
            channel="packets",
            writer=writer,
            reason=reason,
        )

    pipe = Pipeline(
        paths=app.paths,
        gateway=app.config.gateway_id,
        writer_name=writer,
        snapshot=source.current,
        internal_networks=app.config["capture.internal_networks"],
        archive=archive,
        interface=interface,
        on_archive_error=gap,
        flow_config=FlowConfig(max_flows=app.config["capture.max_flows"]),
        bypassed=_bypassed_web(app, writer, interface, source.current),
        limits=subject_limits(app),
    )
    return pipe, (source, archive)


def subject_limits(app: App) -> SubjectLimits:
    """The `[capture]` bounds on subjects' packets in memory (appliance/config/schema_capture)."""
    from capture.subjects import SubjectLimits

    cfg = app.config
    return SubjectLimits(
        hold_max_packets=cfg["capture.hold_max_packets"],
        hold_max_bytes=cfg["capture.hold_max_bytes"],
        hold_total_bytes=cfg["capture.hold_total_bytes"],
        record_max_bytes=cfg["capture.record_max_bytes"],
        record_max_age_s=float(cfg["capture.record_max_age_s"]),
        record_total_bytes=cfg["capture.record_total_bytes"],
    )


def _bypassed_web(
    app: App, writer: str, interface: str | None, snapshot: Any
) -> BypassedWeb | None:
    """Web rows for connections past the proxy: live capture on the inside interface, with
    transparent mode's subjects scope (docs/deployment.md)."""
    cfg = app.config
    if (
        interface is None
        or interface != cfg["gateway.inside_interface"]
        or cfg["web.mode"] != "transparent"
        or cfg["web.transparent_scope"] != "subjects"
    ):
        return None
    from capture.subjects.bypassed import BypassedWeb

    return BypassedWeb(
        paths=app.paths,
        gateway=cfg.gateway_id,
        writer_name=writer,
        snapshot=snapshot,
        notice_version=str(cfg["notice.version"]),
    )


def _text(summary: dict[str, Any]) -> str:
    bad = summary["bad_packets"]
    lines = [
        f"packets: {summary['packets']}",
        f"flows: {summary['flows']}",
        f"dns rows: {summary['dns_rows']}",
    ]
    if summary["archived_packets"]:
        lines.append(f"archived packets: {summary['archived_packets']}")
    if bad:
        lines.append("bad packets by kind:")
        lines.extend(f"  {k}: {v}" for k, v in bad.items())
    if bad.get("reader_truncated_record"):
        lines.append("the file ends inside a record: it is truncated")
    if bad.get("reader_oversize_record"):
        lines.append("records above the size limit were skipped: the records after them were read")
    evicted = summary["flow_counters"].get("evicted", 0)
    if evicted:
        lines.append(f"flows ended early because the flow table was full: {evicted}")
    return "\n".join(lines)


def _replay_text(result: dict[str, Any]) -> str:
    parts = []
    for f in result["files"]:
        head = f"== {safe(f['file'])}"
        if f["status"] != "replayed":
            parts.append(f"{head}\nnot replayed ({f['status']}): {safe(f['error'])}")
        else:
            parts.append(f"{head}\n{_text(f)}")
    if len(result["files"]) > 1:
        parts.append(f"== total ({len(result['files'])} files)\n{_text(result)}")
    return "\n".join(parts)


def _merge(total: dict[str, Any], one: dict[str, Any]) -> None:
    for k in ("packets", "flows", "dns_rows", "archived_packets", "archive_errors"):
        total[k] = total.get(k, 0) + one[k]
    for k in ("bad_packets", "decode_counts", "flow_counters"):
        into = total.setdefault(k, {})
        for name, v in one[k].items():
            into[name] = into.get(name, 0) + v
        total[k] = dict(sorted(into.items()))


@click.group("capture")
def capture() -> None:
    """Packet capture: replay capture files or capture from an interface."""


@capture.command("replay")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option(
    "--again",
    is_flag=True,
    help="replay a file already replayed into this data directory (its rows are duplicated)",
)
@pass_app
def replay_cmd(app: App, files: tuple[str, ...], as_json: bool, again: bool) -> None:
    """Replay capture files (pcap, pcapng) into the flow and dns metadata streams.

    Each file is replayed once: a file already replayed into this data directory (same
    SHA-256 and size, recorded in journal/replayed.jsonl) is refused unless --again. The
    summary is printed per file, then in total."""
    one_blas_thread()
    collect_less()
    early = EarlyHash(files[0])  # before the pipeline's imports: see EarlyHash

    def run() -> dict[str, Any]:
        from capture.read.replayed import ReplayLedger
        from capture.summary import Summary

        pipe, (source, archive) = build_pipeline(app, "replay", None)
        ledger = ReplayLedger(app.paths.journal)
        per_file: list[dict[str, Any]] = []
        failed: dict[str, str] = {}
        archived = errors = 0  # the recorder's counts are cumulative over files
        timing: dict[str, float] = {}
        try:
            for i, name in enumerate(files):
                entry: dict[str, Any] = {"file": name}
                per_file.append(entry)
                try:
                    first = early if name == early.name else None
                    last = i == len(files) - 1
                    one = _replay_one(app, pipe, ledger, name, again, timing, first, last)
                except CaptureError as exc:
                    failed[name] = str(exc)
                    status = "refused" if isinstance(exc, _Refused) else "failed"
                    entry.update(status=status, error=str(exc))
                    continue
                cum = one["archived_packets"], one["archive_errors"]
                one["archived_packets"], one["archive_errors"] = cum[0] - archived, cum[1] - errors
                archived, errors = cum
                if one["files_failed"]:  # broken after the header check (pcapng sections)
                    failed.update(one["files_failed"])
                    error = next(iter(one["files_failed"].values()))  # keyed by the path read
                    entry.update(status="failed", error=error, **one)
                    continue
                entry.update(status="replayed", **one)
        finally:
            closing = time.monotonic()
            try:
                pipe.close()  # every row durable (journal fsynced) and published before exit
            finally:
                archive.close()
                source.stop()
            timing["close"] = timing.get("close", 0.0) + time.monotonic() - closing
        total: dict[str, Any] = {}
        for e in per_file:
            if "packets" in e:
                _merge(total, e)
        empty = Summary().as_dict()
        result = {**empty, **total, "files_failed": failed, "files": per_file}
        for e in per_file:
            e.pop("files_failed", None)
        result["timing"] = timing_summary(timing)
        return result

    try:
        result = run_guarded(run)
    finally:
        early.close()  # the child stopped, whatever happened
    exit_without_teardown()  # every writer, archive and ledger entry is closed and durable
    for name, error in result["files_failed"].items():
        line = error if name in error else f"{name}: {error}"
        click.echo(f"lbm: error: {safe(line)}", err=True)
    emit(result, as_json, _replay_text(result))
    if result["files_failed"]:
        raise SystemExit(EXIT_FAIL)


def _replay_one(
    app: App,
    pipe: Pipeline,
    ledger: Any,
    name: str,
    again: bool,
    timing: dict[str, float],
    early: EarlyHash | None = None,
    last: bool = False,
) -> dict[str, Any]:
    """Replay one file after the ledger's check; its summary, with its sha256 and size.
    `early`: this file's hashing child, if started already. `last`: this is the last file: the
    pipeline is closed (its rows durable and published) before the ledger entry, while the
    hashing child finishes. Raises CaptureError (`_Refused` when the ledger refuses it)."""
    from capture.read.childhash import ChildHash
    from capture.read.reader import open_capture
    from capture.read.replayed import FileHash
    from capture.replay import replay
    from capture.summary import Summary

    reader = open_capture(name)  # header checked: CaptureError naming the file
    keep = os.dup(reader.fileno())  # one open file for the pre-key, the hash and the replay
    hasher: ChildHash | FileHash | None = None
    try:
        run, prior = ledger.begin(keep, name, app.clock.now().isoformat(), again=again)
        started = early.take(keep) if early is not None and run and run.sha256 is None else None
        if early is not None and started is None:
            early.close()  # not needed (refused, or hashed by the ledger), or another file
        if run is None:
            reader.close()
            raise _Refused(_refusal(name, prior or {}))
        if run.sha256 is None:  # not known yet: a child process hashes it meanwhile
            hasher = started or ChildHash.spawn(keep)
            if hasher is None:  # no child could start: hashed from what the reader reads
                hasher = tap = FileHash(keep)
                reader.tap = tap.feed
        pipe.summary = Summary()
        try:
            one = replay([reader], pipe, timing=timing, progress=pacer(hasher, keep)).as_dict()
        except BaseException:
            if not pipe.writers_open:  # no writer was ever opened: not one row was written
                ledger.abort(run, name, app.clock.now().isoformat())
            raise
        if last:  # rows durable before the ledger says done, beside the child
            closing = time.monotonic()
            pipe.close()
            timing["close"] = time.monotonic() - closing
        waiting = time.monotonic()
        sha = run.sha256 or (hasher.result().sha256 if hasher is not None else "")
        timing["hash_wait"] = timing.get("hash_wait", 0.0) + time.monotonic() - waiting
        counts = {k: one[k] for k in ("packets", "flows", "dns_rows")}
        ledger.done(run, name, app.clock.now().isoformat(), sha, counts)
    finally:
        if hasher is not None:
            hasher.close()
        os.close(keep)
    return {"sha256": sha, "size": run.size, **one}


class _Refused(CaptureError):
    """The ledger refused the file: replayed into this data directory before."""


def _refusal(name: str, prior: dict[str, Any]) -> str:
    again = "replaying it again would duplicate its rows; use --again to replay it anyway"
    size = prior.get("size", "?")
    if prior.get("unfinished"):
        return (
            f"{name}: possibly already replayed into this data directory: a replay of a "
            f"capture of the same size ({size} bytes) and the same first and last MiB "
            f"({prior.get('at', '?')}, as {prior.get('file', '?')}) is still running or was "
            f"cut off, so its SHA-256 was never recorded; {again}"
        )
    sha = str(prior.get("sha256") or "?")
    return (
        f"{name}: already replayed into this data directory ({prior.get('at', '?')}, as "
        f"{prior.get('file', '?')}; sha256 {sha[:16]}..., {size} bytes): {again}"
    )


@capture.command("live")
@click.option(
    "--interface",
    "interface",
    required=True,
    metavar="IF",
    help="network interface to capture from (AF_PACKET)",
)
@click.option("--json", "as_json", is_flag=True, help="print the final summary as JSON")
@pass_app
def live_cmd(app: App, interface: str, as_json: bool) -> None:
    """Capture from IF until SIGTERM/SIGINT (writer `capture-IF`)."""
    one_blas_thread()
    from appliance.cli.daemon_metrics import add_policy, add_writer, capture_counters
    from appliance.counters import StatusWriter
    from capture.live import run_live

    def run() -> dict[str, Any]:
        # SIGHUP (from `lbm run` or systemd) must not end the capture: it has nothing to reload
        # (the policy snapshot and identity map follow the registry by themselves)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        pipe, (source, archive) = build_pipeline(app, f"capture-{interface}", interface)
        counters = capture_counters(interface, lambda: pipe.summary)
        add_writer(counters, pipe.flow_w)
        add_policy(counters, source)
        status = StatusWriter(
            app.paths.run, f"capture-{interface}", counters,
            errors={"kernel_drop": lambda: pipe.summary.bad_packets.get("reader_kernel_drop", 0),
                    "archive_gap": lambda: pipe.summary.archive_errors},
        )  # fmt: skip

        def tick() -> None:
            status.tick()
            archive.tick()

        try:
            summary = run_live(interface, pipe, run_dir=app.paths.run, on_tick=tick)
        finally:
            pipe.close()
            archive.close()
            source.stop()
            status.close()
        return summary.as_dict()

    try:
        result = run_guarded(run)
    except CaptureError as exc:
        fail(str(exc), EXIT_FAIL)
    emit(result, as_json, _text(result))
