"""The systemd units, rendered with this venv's paths: `systemd-analyze verify` accepts them, each
service's offline exposure meets its goal (2.0; capture 3.0), and their command lines run for real
(systemd cannot run here: it is not PID 1): each daemon tells a notify socket READY=1 (what
`Type=notify` waits for), runs under the unit's MemoryDenyWriteExecute= (enforced here with the
kernel's PR_SET_MDWE, which survives exec like systemd's filter), and stops on SIGTERM with
exit 0. The relay under that restriction takes a message (250)."""

from __future__ import annotations

import ctypes
import re
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lbm_testing import Lbm

from appliance.cli import systemd_units

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)

SERVICES = {
    "lbm-proxy.service": 2.0,
    "lbm-smtp.service": 2.0,
    "lbm-metrics.service": 2.0,
    "lbm-housekeeping.service": 2.0,
    "lbm-gateway-rules.service": 2.0,
    "lbm-scope-sync.service": 2.0,
    "lbm-capture@.service": 3.0,
}
CAPABILITIES = {  # everything a unit may hold; the rest hold nothing
    "lbm-smtp.service": "CAP_NET_BIND_SERVICE",
    "lbm-capture@.service": "CAP_NET_RAW CAP_NET_ADMIN",
    "lbm-gateway-rules.service": "CAP_NET_ADMIN",
    "lbm-scope-sync.service": "CAP_NET_ADMIN",
}
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


@dataclass(frozen=True)
class Rendered:
    data_dir: Path
    unit_dir: Path
    units: dict[str, str]

    def directives(self, name: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for line in self.units[name].splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                out.setdefault(key, []).append(value)
        return out


@pytest.fixture(scope="module")
def rendered(
    tmp_path_factory: pytest.TempPathFactory, lbm_inproc: Callable[..., object]
) -> Rendered:
    base = tmp_path_factory.mktemp("units")
    lbm = Lbm(base / "data")
    lbm_inproc(lbm.data_dir, "init")
    units = systemd_units.render(
        data_dir=lbm.data_dir, config=lbm.data_dir / "lbm.toml", user="lbm"
    )
    unit_dir = base / "system"
    unit_dir.mkdir()
    for name, text in units.items():
        (unit_dir / name).write_text(text)
    return Rendered(lbm.data_dir, unit_dir, units)


def test_units_verify_and_meet_exposure_goals(rendered: Rendered) -> None:
    assert set(rendered.units) == {*SERVICES, "lbm.target"}
    paths = [str(rendered.unit_dir / n) for n in sorted(rendered.units)]
    verify = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True,
                            text=True, cwd=rendered.unit_dir)  # fmt: skip
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    services = [p for p in paths if p.endswith(".service")]
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", *services],
                              capture_output=True, text=True)  # fmt: skip
    found = dict(re.findall(r"Overall exposure level for (\S+): (\d+\.\d+)", security.stdout))
    assert len(found) == len(SERVICES), security.stdout + security.stderr
    for name, goal in SERVICES.items():
        key = name.replace("@.", "@i.")  # an instance template is analysed as NAME@i
        assert float(found[key]) <= goal, f"{name}: exposure {found[key]} > {goal}"


def test_units_are_notify_with_a_watchdog_and_hold_only_their_capabilities(
    rendered: Rendered,
) -> None:
    for name in SERVICES:
        d = rendered.directives(name)
        assert d["User"] == ["lbm"] and d["ReadWritePaths"][0].startswith(str(rendered.data_dir))
        assert d["PartOf"] == ["lbm.target"] and d["WantedBy"] == ["lbm.target"], name
        if name == "lbm-gateway-rules.service":  # a oneshot: load at start, remove at stop
            assert d["Type"] == ["oneshot"] and d["ExecStop"][0].endswith("gateway rules --remove")
        else:
            assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"], name
            assert int(d["WatchdogSec"][0]) > 0
        assert d["CapabilityBoundingSet"] == [CAPABILITIES.get(name, "")], name
        assert d["AmbientCapabilities"] == [CAPABILITIES.get(name, "")], name
        assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]
    metrics = rendered.directives("lbm-metrics.service")
    assert metrics["IPAddressAllow"] == ["localhost"] and metrics["IPAddressDeny"] == ["any"]
    assert metrics["ReadWritePaths"] == [f"{rendered.data_dir}/run"]
    for name in ("lbm-housekeeping.service", "lbm-scope-sync.service", "lbm-capture@.service"):
        assert rendered.directives(name)["IPAddressDeny"] == ["any"], name
    assert "WantedBy=multi-user.target" in rendered.units["lbm.target"]


def _mdwe() -> None:  # in the child, before exec: as MemoryDenyWriteExecute=yes
    if ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError("PR_SET_MDWE")


@dataclass
class Started:
    name: str
    proc: subprocess.Popen[str]
    notify: socket.socket


@pytest.fixture(scope="module")
def started(rendered: Rendered) -> Iterator[dict[str, Started]]:
    """The proxy, the relay and housekeeping from their units' ExecStart lines, side by side."""
    probe = subprocess.run(
        ["python3", "-c", "import ctypes; print(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0))"],
        capture_output=True,
        text=True,
    )
    if probe.stdout.strip() != "0":
        pytest.skip("this kernel has no PR_SET_MDWE to stand in for MemoryDenyWriteExecute")
    out: dict[str, Started] = {}
    try:
        for short in ("proxy", "smtp", "housekeeping"):
            d = rendered.directives(f"lbm-{short}.service")
            argv = shlex.split(d["ExecStart"][0])
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            addr = rendered.data_dir.parent / f"notify-{short}"
            sock.bind(str(addr))
            sock.settimeout(30)
            env = {"NOTIFY_SOCKET": str(addr), "PATH": "/usr/bin:/bin"}
            mdwe = d["MemoryDenyWriteExecute"] == ["yes"]
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=rendered.data_dir.parent,
                text=True,
                stderr=subprocess.PIPE,
                preexec_fn=_mdwe if mdwe else None,
            )
            out[short] = Started(short, proc, sock)
        yield out
    finally:
        for s in out.values():
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
            s.notify.close()


def test_each_command_line_notifies_ready_and_stops_on_sigterm(
    rendered: Rendered, started: dict[str, Started]
) -> None:
    for s in started.values():
        try:
            message = s.notify.recv(4096)
        except TimeoutError:
            s.proc.kill()
            pytest.fail(f"{s.name}: no READY=1 within 30 s: {s.proc.communicate()[1][-2000:]}")
        assert b"READY=1" in message.split(b"\n"), (s.name, message)
        assert (rendered.data_dir / "run" / f"{s.name}.ready").exists()
    port = int((rendered.data_dir / "run" / "smtp.port").read_text())
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:  # the relay under MDWE
        refused = smtp.sendmail(
            "a@force.example", ["b@elsewhere.example"], b"Subject: t\r\n\r\nx\r\n"
        )
        assert refused == {}
    for s in started.values():
        s.proc.send_signal(signal.SIGTERM)
    for s in started.values():
        assert s.proc.wait(timeout=40) == 0, f"{s.name}: {s.proc.communicate()[1][-2000:]}"
        assert not (rendered.data_dir / "run" / f"{s.name}.ready").exists()


def test_init_system_lets_the_service_user_read_the_config_and_nothing_more(
    tmp_path: Path, lbm_inproc: Callable[..., object]
) -> None:
    import pwd
    import stat

    prefix = tmp_path / "root"
    lbm_inproc(tmp_path / "unused", "init", "--system", "--root", str(prefix), "--user", "nobody")
    config = prefix / "etc/lbm/lbm.toml"
    info = config.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640  # the units (User=nobody here) read it
    assert info.st_uid == 0 and info.st_gid == pwd.getpwnam("nobody").pw_gid  # only root writes
    data = prefix / "var/lib/lbm"
    assert (
        stat.S_IMODE(data.stat().st_mode) == 0o700
        and data.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    )
    units = sorted(p.name for p in (prefix / "etc/systemd/system").iterdir())
    assert units == sorted([*SERVICES, "lbm.target"])


def test_init_system_store_network_opens_only_the_object_store_to_capture_and_housekeeping(
    tmp_path: Path, lbm_inproc: Callable[..., object]
) -> None:
    prefix = tmp_path / "root"
    nets = ("--store-network", "10.20.0.5/32", "--store-network", "fd00::5/128")
    lbm_inproc(tmp_path / "unused", "init", "--system", "--root", str(prefix), *nets)
    unit_dir = prefix / "etc/systemd/system"
    drop_ins = sorted(str(p.relative_to(unit_dir)) for p in unit_dir.glob("*.d/*.conf"))
    assert drop_ins == [
        "lbm-capture@.service.d/objectstore.conf",
        "lbm-housekeeping.service.d/objectstore.conf",
    ]
    text = (unit_dir / drop_ins[0]).read_text()
    assert "IPAddressAllow=10.20.0.5/32 fd00::5/128\n" in text
    assert "RestrictAddressFamilies=AF_INET AF_INET6\n" in text
    # the proxy and relay units are untouched; the base units still deny everything else
    assert "IPAddressDeny=any" in (unit_dir / "lbm-capture@.service").read_text()
    assert not (unit_dir / "lbm-proxy.service.d").exists()


@pytest.mark.parametrize("bad", ["10.20.0.5/33", "store.example", "10.20.0.1/24"])
def test_init_store_network_refuses_what_is_not_a_network(tmp_path: Path, bad: str) -> None:
    res = Lbm(tmp_path / "unused").inproc(
        "init", "--system", "--root", str(tmp_path / "root"), "--store-network", bad
    )
    assert res.returncode == 2 and "--store-network" in res.stderr
    assert not (tmp_path / "root").exists()
