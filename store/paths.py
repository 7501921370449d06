"""Where everything lives in the data directory (layout fixed in DECISIONS.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from store.objectstore import StoreSettings


@dataclass(frozen=True)
class DataPaths:
    root: Path
    # `[store]` roots (issue 19); None: everything local under `root`. `metadata`, `archive` and
    # `keystore` below stay the LOCAL folders (journal-side staging, open segments, local keys);
    # `store_settings` says where published data goes.
    store: StoreSettings | None = None

    @property
    def store_settings(self) -> StoreSettings:
        """The roots in use: `[store]` as loaded by the CLI, else the data dir's own folders."""
        if self.store is not None:
            return self.store
        return StoreSettings(
            metadata_root=str(self.metadata),
            archive_root=str(self.archive),
            keystore_root=str(self.keystore),
        )

    @property
    def config(self) -> Path:
        return self.root / "lbm.toml"

    @property
    def registry(self) -> Path:
        return self.root / "registry.sqlite"

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    @property
    def audit_log(self) -> Path:
        return self.audit_dir / "audit.jsonl"

    @property
    def audit_head(self) -> Path:
        return self.audit_dir / "head"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def signing_key(self) -> Path:
        return self.keys / "gateway_ed25519"

    @property
    def signing_pub(self) -> Path:
        return self.keys / "gateway_ed25519.pub"

    @property
    def old_signing_keys(self) -> Path:
        """Retired gateway public keys, kept so old signatures still verify."""
        return self.keys / "retired"

    @property
    def metadata(self) -> Path:
        return self.root / "metadata"

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def keystore(self) -> Path:
        return self.root / "keystore"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def system_marker(self) -> Path:
        """Written by `lbm init --system`: a live gateway, where the fake clock is refused."""
        return self.root / "lbm-system"
