"""A grant's authorisation key pair, made provisionally: it outlives the grant's transaction only
when that transaction commits.

`provisional()` makes the key pair (through `store.keys.KeyStore`, or a test's key maker) and
removes it again if anything after it fails, including the final COMMIT, so no key material and
no keystore/REF directory is left for a grant the registry does not hold. A key that existed
before the grant (an orphan from a crash) is never removed by it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

from appliance.policy import RegistryError
from store.keys import KeyStore
from store.paths import DataPaths

KeyMaker = Callable[[str, list[str]], str]


class GrantKeys:
    def __init__(self, paths: DataPaths | None, key_maker: KeyMaker | None = None) -> None:
        self.paths = paths
        self.key_maker = key_maker

    def _store(self) -> KeyStore | None:
        return None if self.key_maker is not None or self.paths is None else KeyStore(self.paths)

    def exists(self, ref: str) -> bool:
        store = self._store()
        if store is None:
            return False
        return store.auth_key_path(ref).exists() or store.auth_pub_path(ref).exists()

    def make(self, ref: str, recipients: Sequence[str]) -> str:
        if self.key_maker is not None:
            return self.key_maker(ref, list(recipients))
        if self.paths is None:
            raise RegistryError("no data directory: cannot create the authorisation key")
        return str(KeyStore(self.paths).create_authorisation_key(ref, recipients))

    def remove(self, ref: str) -> None:
        """Remove the key pair of `ref` and its keystore directory (when empty)."""
        store = self._store()
        if store is None:
            return
        for path in (store.auth_key_path(ref), store.auth_pub_path(ref)):
            with suppress(FileNotFoundError):
                path.unlink()
        with suppress(OSError):
            store.ref_dir(ref).rmdir()

    @contextmanager
    def provisional(self, ref: str, recipients: Sequence[str]) -> Iterator[str]:
        """Yield the new public key; remove the pair unless the enclosing block completes."""
        existed = self.exists(ref)
        try:
            yield self.make(ref, recipients)
        except BaseException:
            if not existed:
                self.remove(ref)
            raise
