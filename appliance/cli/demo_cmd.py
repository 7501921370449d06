"""`lbm demo`: a first look for a newcomer, in a throwaway directory, on loopback only
(docs/demo.md). The work is in appliance/cli/demo_run.py, imported only when the demo runs so
that other commands do not pay for its imports."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=None,
    help="where to put the demo (new or empty; default: a new temporary directory)",
)
def demo(directory: Path | None) -> None:
    """Run the appliance on loopback with two pretend users, one under an authorisation: their
    traffic, their metadata side by side, the subject's evidence. Under a minute; leaves
    nothing running."""
    from appliance.cli.demo_run import run_demo

    run_demo(directory)
