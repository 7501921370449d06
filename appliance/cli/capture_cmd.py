"""`lbm capture`: replay capture files, or capture live from an interface.

`lbm capture replay FILE...` runs each file through the packet pipeline (writer `replay`) and
prints packets, flows and bad packets by kind (`--json` for a machine-readable summary). A file
whose header is broken gets one clear error line naming it; the other files are still processed
and the exit status is 1 at the end. Decisions use the capture's own timestamps.

`lbm capture live --interface IF` is the capture daemon (writer `capture-IF`): it runs until
SIGTERM or SIGINT, then flushes every flow and exits 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from appliance.cli.app import EXIT_FAIL, App, emit, fail, pass_app, run_guarded
from capture import CaptureError
from capture.flows import FlowConfig
from capture.pipeline import Pipeline, replay
from store.archive import Archive
from store.audit import Action


def build_pipeline(app: App, writer: str, interface: str | None) -> tuple[Pipeline, Any]:
    """Pipeline wired to this data directory: policy snapshots, identity, archive, audit."""
    from appliance.cli.auth_cmd import snapshot_source

    app.require_initialised()
    source = snapshot_source(app)
    archive = Archive(app.paths, app.gateway_key, app.clock, audit=app.audit, actor=app.actor)
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
    )
    return pipe, (source, archive)


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
    evicted = summary["flow_counters"].get("evicted", 0)
    if evicted:
        lines.append(f"flows ended early because the flow table was full: {evicted}")
    return "\n".join(lines)


@click.group("capture")
def capture() -> None:
    """Packet capture: replay capture files or capture from an interface."""


@capture.command("replay")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@pass_app
def replay_cmd(app: App, files: tuple[str, ...], as_json: bool) -> None:
    """Replay capture files (pcap, pcapng) into the flow and dns metadata streams."""

    def run() -> dict[str, Any]:
        pipe, (source, archive) = build_pipeline(app, "replay", None)
        try:
            summary = replay([Path(f) for f in files], pipe)
        finally:
            pipe.close()
            archive.close()
            source.stop()
        return summary.as_dict()

    result = run_guarded(run)
    for name, error in result["files_failed"].items():
        click.echo(
            f"lbm: error: {error}" if name in error else f"lbm: error: {name}: {error}", err=True
        )
    emit(result, as_json, _text(result))
    if result["files_failed"]:
        raise SystemExit(EXIT_FAIL)


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
    from capture.live import run_live

    def run() -> dict[str, Any]:
        pipe, (source, archive) = build_pipeline(app, f"capture-{interface}", interface)
        try:
            summary = run_live(interface, pipe, run_dir=app.paths.run, on_tick=archive.tick)
        finally:
            pipe.close()
            archive.close()
            source.stop()
        return summary.as_dict()

    try:
        result = run_guarded(run)
    except CaptureError as exc:
        fail(str(exc), EXIT_FAIL)
    emit(result, as_json, _text(result))
