"""Fixtures for the end-to-end mail tests (tests/support/mail_relay.py has the parts).

`mail_dir`: an `lbm init` data dir with identities, an investigator and an `email` grant for the
subject, `[smtp]` pointed at `upstream` (a `RecordingUpstream`). `relay`: a started `lbm smtp run`
on it. `relay_factory`: make one without starting it (change the config with `set_option` first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lbm_testing import Lbm
from mail_relay import MailDir, Relay, prepare, set_option
from smtp_upstream import RecordingUpstream


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as server:
        yield server


@pytest.fixture
def mail_dir(lbm: Lbm, tmp_path: Path, upstream: RecordingUpstream) -> MailDir:
    return prepare(lbm, tmp_path, upstream)


@pytest.fixture
def relay_factory(
    mail_dir: MailDir, upstream: RecordingUpstream, tmp_path: Path
) -> Iterator[Callable[[], Relay]]:
    """Make (not start) a relay on `mail_dir`; change the config with `set_option` first."""
    made: list[Relay] = []

    def make() -> Relay:
        relay = Relay(mail_dir.lbm, upstream, tmp_path)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.close()


@pytest.fixture
def relay(relay_factory: Callable[[], Relay]) -> Relay:
    return relay_factory().start()


@pytest.fixture(scope="module")
def module_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """One started relay (and upstream) for a whole test module, to save the set-up time of
    tests that only send through it. Its users file (`users_file`, empty at first) is reread
    by the relay when it changes. Each test starts with an empty upstream record."""
    tmp = tmp_path_factory.mktemp("module-relay")
    lbm = Lbm(tmp / "data")
    lbm("init", check=True)
    config = lbm.data_dir / "lbm.toml"
    config.write_text(config.read_text().replace("fake_clock = false", "fake_clock = true"))
    users = tmp / "users"
    users.write_text("")
    users.chmod(0o600)
    set_option(lbm.data_dir, "identity", "users_file", f'"{users}"')
    with RecordingUpstream() as upstream:
        prepare(lbm, tmp, upstream)
        relay = Relay(lbm, upstream, tmp, users_file=users)
        try:
            yield relay.start()
        finally:
            relay.close()


@pytest.fixture
def shared_relay(module_relay: Relay) -> Relay:
    module_relay.upstream.accept()
    module_relay.upstream.clear()
    return module_relay
