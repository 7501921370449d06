"""Web test fixtures: a real upstream (tests/support/web_upstream.py) and `lbm proxy run` as a
real subprocess on port 0 in an initialised data dir (helpers in tests/support/web_proxy.py).

`start_proxy(env=...)` starts the daemon and returns a `web_proxy.ProxyDaemon` once
`run/proxy.ready` exists; every daemon is stopped at teardown. `web_lbm` is the `lbm` data dir
trusting the upstream's test CA (`[web] upstream_ca_file`) with its names mapped to 127.0.0.1
(`[testing] hosts`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lbm_testing import REPO, Lbm
from web_proxy import ProxyDaemon, set_option
from web_upstream import Upstream


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    with Upstream(tmp_path / "upstream") as up:
        yield up


@pytest.fixture
def web_lbm(lbm: Lbm, upstream: Upstream) -> Lbm:
    """The `lbm` data dir set up for the proxy: upstream trust, host map."""
    set_option(lbm.data_dir, "web", "upstream_ca_file", json.dumps(str(upstream.ca_file)))
    set_option(lbm.data_dir, "testing", "hosts", json.dumps(upstream.hosts_option()))
    return lbm


@pytest.fixture
def start_proxy(web_lbm: Lbm) -> Iterator[Callable[..., ProxyDaemon]]:
    daemons: list[ProxyDaemon] = []

    def start(env: dict[str, str] | None = None, timeout: float = 30) -> ProxyDaemon:
        data = web_lbm.data_dir
        run = data / "run"
        ready = run / "proxy.ready"
        ready.unlink(missing_ok=True)
        full_env = {k: v for k, v in web_lbm.env.items() if k != "LBM_FAKE_NOW"}
        full_env.update(env or {})
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(data), "proxy", "run"],
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"lbm proxy run exited {proc.returncode}:\n{out}\n{err}")
            if time.monotonic() > deadline:
                proc.kill()
                out, err = proc.communicate()
                raise AssertionError(f"lbm proxy run never became ready:\n{out}\n{err}")
            time.sleep(0.05)
        port = int((run / "proxy.port").read_text())
        daemon = ProxyDaemon(data, proc, port)
        daemons.append(daemon)
        return daemon

    yield start
    for d in daemons:
        d.stop()
