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


# Units that reach the object store when a `[store]` root is s3:// (issue 19): the capture
# daemon publishes its flow/dns rows, housekeeping uploads sealed archives. Hardened without
# network by default; `lbm init --system --store-network CIDR` opens exactly the store's
# addresses with a drop-in (systemd merges RestrictAddressFamilies= and IPAddressAllow= lists;
# IPAddressAllow= wins over the unit's IPAddressDeny=any).
STORE_CLIENT_UNITS = ("lbm-capture@.service", "lbm-housekeeping.service")
STORE_DROP_IN = "objectstore.conf"


def store_drop_ins(networks: list[str]) -> dict[str, str]:
    """Drop-in path (relative to the unit dir) -> text letting the store clients reach
    `networks` (CIDR, already validated) and nothing else."""
    if not networks:
        return {}
    text = (
        "# Written by `lbm init --system --store-network`: the object store's addresses only.\n"
        "[Service]\n"
        "RestrictAddressFamilies=AF_INET AF_INET6\n"
        f"IPAddressAllow={' '.join(networks)}\n"
    )
    return {f"{unit}.d/{STORE_DROP_IN}": text for unit in STORE_CLIENT_UNITS}


def write_units(prefix: Path, units: dict[str, str]) -> list[Path]:
    target = ensure_dir(prefix / UNIT_DIR, mode=0o755)
    written = []
    for name, text in units.items():
        path = target / name
        if path.parent != target:  # a drop-in: UNIT.d/NAME.conf
            ensure_dir(path.parent, mode=0o755)
        atomic_write(path, text.encode(), mode=0o644)
        written.append(path)
    return written
