"""The key store: per-authorisation and per-segment X25519 keys, only ever kept wrapped.

Two levels (DECISIONS.md "Keys"):

- keystore/REF/auth.pub   the authorisation's public key (age1...), which the gateway uses;
- keystore/REF/auth.age   its private key (an age identity file) encrypted to the assigned
                          investigators and the custodians; the gateway cannot open it;
- keystore/REF/NNNNNN.age each segment's private key, encrypted to auth.pub.

An investigator goes `age -d -i inv.key auth.age > auth.key`, `age -d -i auth.key NNNNNN.age >
seg.key`, `age -d -i seg.key archive/REF/NNNNNN.age`; `unwrap_authorisation` and
`unwrap_segment` do the same in memory. Shredding overwrites and unlinks a wrapped key, then
fsyncs the directory: every copy of what it protected becomes unreadable, provided the key store
is backed up apart from the archives.

With `[store] keystore_root` elsewhere (its own bucket, store/keystore_remote.py), keys are still
written here first; the archive uploader mirrors them. A key missing here is read from the mirror
unless a tombstone (`NNNNNN.destroyed`, or `destroyed` for the authorisation) says it was
shredded; shredding deletes both copies, and a mirror copy that could not be deleted yet is
deleted by the next upload pass (`pending_remote_shreds`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from store import KeyError_, StoreError
from store import agefile as age
from store.actor import current_actor
from store.audit import Action, AuditLog
from store.bech32 import Bech32Error, parse_age_recipient
from store.fsutil import atomic_write, ensure_dir, fsync_dir
from store.keystore_remote import KeyMirror, check_store_roots, open_key_mirror
from store.paths import DataPaths

RESYNC = "auth.resync"  # a rewrap the keystore root has not received yet
REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_ref(ref: str) -> str:
    if not REF_RE.fullmatch(ref) or ".." in ref:
        raise KeyError_(f"authorisation reference {ref!r}: must match [A-Za-z0-9][A-Za-z0-9._-]*")
    return ref


def segment_name(segment: int) -> str:
    if not 0 < segment < 1_000_000_000:
        raise KeyError_(f"segment number {segment} out of range 1..999999999")
    return f"{segment:06d}"


def shred(path: Path) -> bool:
    """Overwrite a file with random bytes, fsync, unlink, fsync the directory. False if absent."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, os.urandom(max(size, 1)))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    fsync_dir(path.parent)
    return True


class KeyStore:
    """Creates, unwraps, rewraps and destroys the wrapped keys of keystore/.

    With `audit`, authorisation-key creation, rewraps and every destruction are audited
    (KEY_CREATE, KEY_REWRAP, KEY_DESTROY) with fingerprints only. Segment keys made by the
    archive are covered by its SEGMENT_CLOSE entries.
    """

    def __init__(
        self, paths: DataPaths, *, audit: AuditLog | None = None, actor: str | None = None
    ) -> None:
        self.paths = paths
        self.audit = audit
        self.actor = actor
        self._mirror: KeyMirror | bool | None = False  # False: not opened yet
        self._checked = False

    def mirror(self, *, checked: bool = True) -> KeyMirror | None:
        """The keystore root's copy, or None when the keystore root is keystore/ itself.
        Opened (and checked: own bucket, no versioning) on first use only: the daemons that
        just write keys never touch the network. Raises KeyError_ if it cannot be used.
        `checked=False` (shredding only): a keystore refused for reads and writes (versioning
        turned on after the start) must still have its copies, every version, deleted."""
        settings = self.paths.store_settings
        try:
            if self._mirror is False:
                self._mirror = open_key_mirror(settings, str(self.paths.keystore))
            if checked and not self._checked and isinstance(self._mirror, KeyMirror):
                check_store_roots(settings)
                self._checked = True
        except (StoreError, OSError) as exc:
            raise KeyError_(f"key store root: {exc}") from None
        return self._mirror if isinstance(self._mirror, KeyMirror) else None

    def _read(self, path: Path, ref: str, tombstone: Path) -> bytes:
        """A wrapped key: the local file, else the keystore root's copy (never after a shred)."""
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if tombstone.exists():
                raise
        mirror = self.mirror()
        if mirror is None:
            raise FileNotFoundError(path)
        try:
            data = mirror.get(ref, path.name)
        except (StoreError, OSError) as exc:
            raise KeyError_(f"{ref}/{path.name}: key store root unreachable: {exc}") from None
        if data is None:
            raise FileNotFoundError(path)
        return data

    def _remote_delete(self, ref: str, name: str) -> str:
        """Delete the keystore root's copy: 'deleted', 'absent', 'none' (no mirror) or
        'pending' (unreachable now; the upload pass retries, the tombstone stays)."""
        try:
            mirror = self.mirror(checked=False)
            if mirror is None:
                return "none"
            if name == "*":  # the whole authorisation: every key object of REF
                return "deleted" if mirror.delete_all(ref) else "absent"
            return "deleted" if mirror.delete(ref, name) else "absent"
        except (KeyError_, StoreError, OSError):
            return "pending"

    def _audit(self, action: Action, ref: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.append(action, self.actor or current_actor(), refs=(ref,), **fields)

    # -- paths -------------------------------------------------------------------------------
    def ref_dir(self, ref: str) -> Path:
        return self.paths.keystore / check_ref(ref)

    def auth_key_path(self, ref: str) -> Path:
        return self.ref_dir(ref) / "auth.age"

    def auth_pub_path(self, ref: str) -> Path:
        return self.ref_dir(ref) / "auth.pub"

    def destroyed_marker(self, ref: str) -> Path:
        return self.ref_dir(ref) / "destroyed"

    def segment_key_path(self, ref: str, segment: int) -> Path:
        return self.ref_dir(ref) / f"{segment_name(segment)}.age"

    def segment_tombstone(self, ref: str, segment: int) -> Path:
        return self.ref_dir(ref) / f"{segment_name(segment)}.destroyed"

    def segment_key_exists(self, ref: str, segment: int) -> bool:
        """Here, or (never after a shred) in the keystore root."""
        if self.segment_key_path(ref, segment).exists():
            return True
        if self.segment_tombstone(ref, segment).exists():
            return False
        try:
            mirror = self.mirror()
            name = self.segment_key_path(ref, segment).name
            return mirror is not None and mirror.get(ref, name) is not None
        except (KeyError_, StoreError, OSError):
            return False

    # -- authorisation keys -----------------------------------------------------------------
    @staticmethod
    def _check_recipients(recipients: Sequence[str], ref: str) -> list[str]:
        checked = []
        for r in recipients:
            try:
                age.parse_recipient(r)
                parse_age_recipient(r.strip())  # never wrap to a low-order point
            except (age.AgeError, Bech32Error) as exc:
                raise KeyError_(f"authorisation {ref}: recipient {r!r}: {exc}") from None
            checked.append(r.strip())
        if not checked:
            raise KeyError_(
                f"authorisation {ref}: no recipients (assign an investigator or "
                "configure [keys] custodians)"
            )
        return sorted(set(checked))

    def create_authorisation_key(self, ref: str, recipients: Sequence[str]) -> str:
        """Make the authorisation's key pair, wrap the private half, return the public half."""
        wanted = self._check_recipients(recipients, ref)
        directory = self.ref_dir(ref)
        if self.auth_pub_path(ref).exists() or self.auth_key_path(ref).exists():
            raise KeyError_(f"authorisation {ref}: a key exists already")
        if self.destroyed_marker(ref).exists():
            raise KeyError_(
                f"authorisation {ref}: its key was destroyed; a reference is never reused"
            )
        ensure_dir(self.paths.keystore)
        ensure_dir(directory)
        secret, public = age.generate()
        text = age.identity_file_text(secret, [f"lbm authorisation key for {ref}"])
        atomic_write(self.auth_key_path(ref), age.encrypt_bytes(text.encode(), wanted), 0o600)
        del secret, text
        atomic_write(self.auth_pub_path(ref), (public + "\n").encode(), 0o600)
        self._audit(
            Action.KEY_CREATE,
            ref,
            key="authorisation",
            recipients=wanted,
            fingerprint=age.recipient_fingerprint(public),
        )
        return public

    def authorisation_public(self, ref: str) -> str:
        path = self.auth_pub_path(ref)
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            if not self.destroyed_marker(ref).exists() and self._mirror is not False:
                try:  # only where the mirror is already in use (readers, never the daemons)
                    text = self._read(path, ref, self.destroyed_marker(ref)).decode().strip()
                    age.parse_recipient(text)
                    return text
                except (FileNotFoundError, KeyError_, UnicodeDecodeError, age.AgeError):
                    pass
            if self.destroyed_marker(ref).exists():
                raise KeyError_(f"authorisation {ref}: its key was destroyed") from None
            raise KeyError_(f"authorisation {ref}: no key ({path} missing)") from None
        try:
            age.parse_recipient(text)
        except age.AgeError as exc:
            raise KeyError_(f"{path}: {exc}") from None
        return text

    def unwrap_authorisation(self, ref: str, identity_text: str) -> str:
        """The authorisation's AGE-SECRET-KEY text, in memory, using an investigator identity."""
        path = self.auth_key_path(ref)
        try:
            data = self._read(path, ref, self.destroyed_marker(ref))
        except FileNotFoundError:
            raise KeyError_(
                f"authorisation {ref}: wrapped key {path} missing (destroyed?)"
            ) from None
        try:
            identities = age.parse_identity_file(identity_text)
            plain = age.decrypt_bytes(data, identities).decode()
            keys = age.parse_identity_file(plain, str(path))
        except (age.AgeError, UnicodeDecodeError) as exc:
            raise KeyError_(f"authorisation {ref}: cannot unwrap {path}: {exc}") from None
        secret = age.encode_identity(keys[0])
        if age.public_of(secret) != self.authorisation_public(ref):
            raise KeyError_(f"authorisation {ref}: {path} does not match auth.pub")
        return secret

    def rewrap(self, ref: str, identity_text: str, recipients: Sequence[str]) -> None:
        """Wrap the authorisation key to exactly `recipients` (needs a current holder)."""
        wanted = self._check_recipients(recipients, ref)
        secret = self.unwrap_authorisation(ref, identity_text)
        text = age.identity_file_text(secret, [f"lbm authorisation key for {ref}"])
        wrapped = age.encrypt_bytes(text.encode(), wanted)
        del secret, text
        ensure_dir(self.ref_dir(ref))
        atomic_write(self.auth_key_path(ref), wrapped, 0o600)
        mirrored = "none"
        try:
            mirror = self.mirror()
            if mirror is not None:
                mirror.put(ref, "auth.age", wrapped)
                mirrored = "updated"
        except (KeyError_, StoreError, OSError):
            mirrored = "failed"
        self._audit(
            Action.KEY_REWRAP, ref, key="authorisation", recipients=wanted, keystore_root=mirrored
        )
        if mirrored == "failed":  # the upload pass copies it as soon as the store answers
            atomic_write(self.ref_dir(ref) / RESYNC, b"", 0o600)
            raise KeyError_(
                f"authorisation {ref}: rewrapped in keystore/, but the key store root's copy "
                "still wraps to the previous holders (unreachable); run the rewrap again"
            )

    def destroy_authorisation(self, ref: str) -> bool:
        """Crypto-shred every segment of `ref`: destroy the wrapped authorisation key (and the
        public key, so nothing new is archived to it). Returns False if it was already gone."""
        existed = shred(self.auth_key_path(ref))
        pub = self.auth_pub_path(ref)
        if pub.exists():
            pub.unlink()
        if self.ref_dir(ref).is_dir():
            atomic_write(self.destroyed_marker(ref), b"", 0o600)
        remote = self._remote_delete(ref, "*")
        existed = existed or remote == "deleted"
        self._audit(
            Action.KEY_DESTROY, ref, key="authorisation", existed=existed, keystore_root=remote
        )
        return existed

    # -- segment keys -----------------------------------------------------------------------
    def new_segment_key(self, ref: str, segment: int) -> tuple[str, str]:
        """Make a segment key pair, store its private half wrapped to the authorisation key,
        and return (segment recipient age1..., fingerprint). The private half is forgotten."""
        auth_public = self.authorisation_public(ref)
        path = self.segment_key_path(ref, segment)
        if path.exists():
            raise KeyError_(f"{path}: a segment key exists already")
        secret, public = age.generate()
        label = f"lbm segment key for {ref}/{segment_name(segment)}"
        text = age.identity_file_text(secret, [label])
        atomic_write(path, age.encrypt_bytes(text.encode(), [auth_public]), 0o600)
        del secret, text
        return public, age.recipient_fingerprint(public)

    def unwrap_segment(self, ref: str, segment: int, auth_identity: str) -> str:
        path = self.segment_key_path(ref, segment)
        try:
            data = self._read(path, ref, self.segment_tombstone(ref, segment))
        except FileNotFoundError:
            raise KeyError_(
                f"segment {ref}/{segment_name(segment)}: wrapped key {path} missing (destroyed?)"
            ) from None
        try:
            plain = age.decrypt_bytes(data, [auth_identity]).decode()
            return age.encode_identity(age.parse_identity_file(plain, str(path))[0])
        except (age.AgeError, UnicodeDecodeError) as exc:
            raise KeyError_(
                f"segment {ref}/{segment_name(segment)}: cannot unwrap {path}: {exc}"
            ) from None

    def destroy_segment(self, ref: str, segment: int) -> bool:
        """Crypto-shred one segment. Returns False if its wrapped key was already gone."""
        existed = shred(self.segment_key_path(ref, segment))
        remote = self.shred_segment_elsewhere(ref, segment)
        existed = existed or remote == "deleted"
        self._audit(
            Action.KEY_DESTROY,
            ref,
            key="segment",
            segment=f"{ref}/{segment_name(segment)}",
            existed=existed,
            keystore_root=remote,
        )
        return existed

    def shred_segment_elsewhere(self, ref: str, segment: int) -> str:
        """After the local key is shredded: a tombstone (the mirror's copy is never read
        again), then the keystore root's copy deleted (`shred_remote`'s answer)."""
        if self.ref_dir(ref).is_dir():
            atomic_write(self.segment_tombstone(ref, segment), b"", 0o600)
        return self._remote_delete(ref, self.segment_key_path(ref, segment).name)

    def shred_remote(self, ref: str, name: str) -> str:
        """Delete the keystore root's copy of a shredded key ('*': all of REF's); returns
        'deleted', 'absent', 'none' or 'pending' (unreachable: retried by the upload pass)."""
        return self._remote_delete(ref, name)

    def sync_rewrapped(self, mirror: KeyMirror) -> int:
        """Copy auth.age to the keystore root for every rewrap that could not (RESYNC)."""
        done = 0
        root = self.paths.keystore
        for marker in sorted(root.glob(f"*/{RESYNC}")) if root.is_dir() else []:
            ref = marker.parent.name
            if self.auth_key_path(ref).exists():
                mirror.put(ref, "auth.age", self.auth_key_path(ref).read_bytes())
                done += 1
            marker.unlink()
        return done

    def pending_remote_shreds(self) -> list[tuple[str, str]]:
        """(ref, key name or '*') of every local tombstone; the upload pass deletes their
        mirror copies (a no-op once gone)."""
        found: list[tuple[str, str]] = []
        root = self.paths.keystore
        if not root.is_dir():
            return found
        for ref_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for entry in sorted(ref_dir.iterdir()):
                if entry.name == "destroyed":
                    found.append((ref_dir.name, "*"))
                elif entry.name.endswith(".destroyed"):
                    found.append((ref_dir.name, entry.name.replace(".destroyed", ".age")))
        return found
