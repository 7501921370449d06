"""Render the hardened systemd units in `systemd/` with this installation's real paths.

`lbm init --system --root PREFIX` writes them to PREFIX/etc/systemd/system/, with the data
directory /var/lib/lbm and the configuration /etc/lbm/lbm.toml as the gateway will see them
(PREFIX is where the files go, like DESTDIR; `/` on the gateway itself). The units run the same
command lines `lbm run` supervises.
"""

from __future__ import annotations

import sys
from pathlib import Path

from store.fsutil import atomic_write, ensure_dir

TEMPLATES = Path(__file__).resolve().parents[2] / "systemd"
SYSTEM_DATA_DIR = Path("/var/lib/lbm")
SYSTEM_CONFIG = Path("/etc/lbm/lbm.toml")
UNIT_DIR = Path("etc/systemd/system")


class UnitError(Exception):
    """The unit templates cannot be found or rendered."""


def render(*, data_dir: Path, config: Path, user: str, python: str | None = None) -> dict[str, str]:
    """Unit file name -> text."""
    if not TEMPLATES.is_dir():
        raise UnitError(f"{TEMPLATES}: unit templates not found (install from a source checkout)")
    values = {
        "data_dir": str(data_dir),
        "config": str(config),
        "user": user,
        "python": python or sys.executable,
    }
    units = {}
    for template in sorted(TEMPLATES.glob("*.in")):  # services, lbm.target
        units[template.name.removesuffix(".in")] = template.read_text().format(**values)
    if not units:
        raise UnitError(f"{TEMPLATES}: no *.in unit templates")
    return units


def write_units(prefix: Path, units: dict[str, str]) -> list[Path]:
    target = ensure_dir(prefix / UNIT_DIR, mode=0o755)
    written = []
    for name, text in units.items():
        path = target / name
        atomic_write(path, text.encode(), mode=0o644)
        written.append(path)
    return written
