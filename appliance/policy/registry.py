"""The authorisation register in registry.sqlite: grants, their append-only history, assignments.

Tables (made by `ensure_schema`, which `lbm init` calls):

- `authorisations`: one row per authorisation as granted (application, statements, officer,
  start, the authorisation's age public key). Never updated or deleted (triggers refuse it).
- `auth_history`: every event (grant, urgent, ratify, renew, review, cancel, assign, rewrap),
  with the computed effective expiry where the event sets one. Append-only (triggers refuse
  UPDATE and DELETE), so nothing past is rewritten and `decide` can answer for past instants.
- `auth_assignments`: which investigators are assigned to which authorisation (a registry fact
  checked by software); the authorisation key follows on `lbm keys rewrap`.

Every change is audited (`Action.AUTH_*`) inside the same transaction, so a change whose audit
entry cannot be written is rolled back. Refusals by a rule are audited as `AUTH_REFUSED`.
Statements are stored here; the audit log carries only their SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from appliance.policy import RegistryError, RuleViolation, rules
from appliance.policy.model import (
    Application,
    Authorisation,
    CaseType,
    Channel,
    EventKind,
    HistoryEvent,
    Officer,
    Purpose,
    Rank,
)
from store import StoreError
from store import investigators as investigators_table
from store import sqlite as store_sqlite
from store.audit import Action, AuditLog
from store.clock import Clock, format_utc, parse_utc
from store.paths import DataPaths

SCHEMA = """
CREATE TABLE IF NOT EXISTS authorisations (
    ref TEXT PRIMARY KEY COLLATE NOCASE,
    subject TEXT NOT NULL,
    case_type TEXT NOT NULL,
    purposes TEXT NOT NULL,
    channels TEXT NOT NULL,
    officer TEXT NOT NULL,
    officer_name TEXT NOT NULL,
    officer_role TEXT NOT NULL,
    officer_rank TEXT NOT NULL,
    urgent INTEGER NOT NULL,
    necessity TEXT NOT NULL,
    proportionality TEXT NOT NULL,
    collateral TEXT NOT NULL,
    ripa_considered INTEGER NOT NULL,
    ripa_note TEXT NOT NULL,
    start TEXT NOT NULL,
    investigators TEXT NOT NULL,
    open_do_not_decrypt INTEGER NOT NULL,
    retention_days INTEGER,
    public_key TEXT NOT NULL,
    created_at TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS authorisations_subject ON authorisations(subject);
CREATE TABLE IF NOT EXISTS auth_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT NOT NULL REFERENCES authorisations(ref),
    kind TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    officer TEXT,
    text TEXT NOT NULL DEFAULT '',
    expiry TEXT,
    investigators TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS auth_history_ref ON auth_history(ref, seq);
CREATE TABLE IF NOT EXISTS auth_assignments (
    ref TEXT NOT NULL REFERENCES authorisations(ref),
    investigator TEXT NOT NULL,
    assigned_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    PRIMARY KEY (ref, investigator)
);
CREATE TRIGGER IF NOT EXISTS auth_history_no_update BEFORE UPDATE ON auth_history
BEGIN SELECT RAISE(ABORT, 'auth_history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS auth_history_no_delete BEFORE DELETE ON auth_history
BEGIN SELECT RAISE(ABORT, 'auth_history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS authorisations_no_update BEFORE UPDATE ON authorisations
BEGIN SELECT RAISE(ABORT, 'authorisations are never rewritten; append history'); END;
CREATE TRIGGER IF NOT EXISTS authorisations_no_delete BEFORE DELETE ON authorisations
BEGIN SELECT RAISE(ABORT, 'authorisations are never deleted'); END;
"""

KeyMaker = Callable[[str, list[str]], str]


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    investigators_table.ensure_schema(conn)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- reading -----------------------------------------------------------------------------------
def _officer(raw: str | None) -> Officer | None:
    if not raw:
        return None
    data = json.loads(raw)
    return Officer(data["principal"], data["name"], data["role"], Rank(data["rank"]))


def _event(row: sqlite3.Row) -> HistoryEvent:
    return HistoryEvent(
        seq=row["seq"],
        ref=row["ref"],
        kind=EventKind(row["kind"]),
        at=parse_utc(row["at"]),
        actor=row["actor"],
        officer=_officer(row["officer"]),
        text=row["text"],
        expiry=parse_utc(row["expiry"]) if row["expiry"] else None,
        investigators=tuple(json.loads(row["investigators"])),
    )


def _authorisation(row: sqlite3.Row, events: Sequence[HistoryEvent]) -> Authorisation:
    app = Application(
        ref=row["ref"],
        subject=row["subject"],
        case_type=CaseType(row["case_type"]),
        purposes=tuple(Purpose(p) for p in json.loads(row["purposes"])),
        channels=tuple(Channel(c) for c in json.loads(row["channels"])),
        officer=Officer(
            row["officer"], row["officer_name"], row["officer_role"], Rank(row["officer_rank"])
        ),
        necessity=row["necessity"],
        proportionality=row["proportionality"],
        collateral=row["collateral"],
        ripa_considered=bool(row["ripa_considered"]),
        ripa_note=row["ripa_note"],
        start=parse_utc(row["start"]),
        investigators=tuple(json.loads(row["investigators"])),
        urgent=bool(row["urgent"]),
        open_do_not_decrypt=bool(row["open_do_not_decrypt"]),
        retention_days=row["retention_days"],
    )
    return Authorisation(app, row["public_key"], parse_utc(row["created_at"]), tuple(events))


def _has_schema(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='auth_history'"
    ).fetchone()
    return row is not None


def load_all(conn: sqlite3.Connection) -> tuple[Authorisation, ...]:
    """Every authorisation with its history, in one read transaction (a consistent view)."""
    if not _has_schema(conn):
        return ()
    in_tx = conn.in_transaction
    if not in_tx:
        conn.execute("BEGIN")
    try:
        events: dict[str, list[HistoryEvent]] = {}
        for row in conn.execute("SELECT * FROM auth_history ORDER BY seq"):
            events.setdefault(row["ref"], []).append(_event(row))
        rows = conn.execute("SELECT * FROM authorisations ORDER BY start, ref").fetchall()
    finally:
        if not in_tx:
            conn.execute("COMMIT")
    return tuple(_authorisation(r, events.get(r["ref"], [])) for r in rows)


def load_one(conn: sqlite3.Connection, ref: str) -> Authorisation | None:
    if not _has_schema(conn):
        return None
    row = conn.execute("SELECT * FROM authorisations WHERE ref = ?", (ref,)).fetchone()
    if row is None:
        return None
    events = [
        _event(r)
        for r in conn.execute(
            "SELECT * FROM auth_history WHERE ref = ? ORDER BY seq", (row["ref"],)
        )
    ]
    return _authorisation(row, events)


def assignees(conn: sqlite3.Connection, ref: str) -> tuple[str, ...]:
    """Investigators assigned to `ref` (registry fact; removed investigators included)."""
    rows = conn.execute(
        "SELECT investigator FROM auth_assignments WHERE ref = ? "
        "ORDER BY assigned_at, investigator",
        (ref,),
    ).fetchall()
    return tuple(r["investigator"] for r in rows)


@dataclass(frozen=True)
class ListedAuthorisation:
    authorisation: Authorisation
    state: str
    flags: tuple[str, ...]
    rewrap_due: bool


# -- writing -----------------------------------------------------------------------------------
class Registry:
    """The register, bound to a connection, a clock, an actor and (for changes) the audit log."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        clock: Clock,
        actor: str,
        audit: AuditLog | None = None,
        paths: DataPaths | None = None,
        custodians: Sequence[str] = (),
        key_maker: KeyMaker | None = None,
        renewal_window_days: int = rules.DEFAULT_RENEWAL_WINDOW_DAYS,
    ) -> None:
        self.conn = conn
        self.renewal_window_days = renewal_window_days
        self.clock = clock
        self.actor = actor
        self.audit = audit
        self.paths = paths
        self.custodians = tuple(custodians)
        self._key_maker = key_maker
        ensure_schema(conn)

    @classmethod
    def open(
        cls,
        paths: DataPaths,
        *,
        clock: Clock,
        actor: str,
        audit: AuditLog | None,
        custodians: Sequence[str] = (),
    ) -> Registry:
        return cls(
            store_sqlite.connect(paths.registry),
            clock=clock,
            actor=actor,
            audit=audit,
            paths=paths,
            custodians=custodians,
        )

    def close(self) -> None:
        self.conn.close()

    # -- helpers -------------------------------------------------------------------------------
    def _make_key(self, ref: str, recipients: list[str]) -> str:
        if self._key_maker is not None:
            return self._key_maker(ref, recipients)
        if self.paths is None:
            raise RegistryError("no data directory: cannot create the authorisation key")
        from store.keys import KeyStore  # written alongside; imported when a grant needs it

        return str(KeyStore(self.paths).create_authorisation_key(ref, recipients))

    def _undo_key(self, ref: str) -> None:
        """Remove a key pair made for a grant that was then not recorded (so a retry works)."""
        if self._key_maker is not None or self.paths is None:
            return
        from store.keys import KeyStore

        store = KeyStore(self.paths)
        for path in (store.auth_key_path(ref), store.auth_pub_path(ref)):
            with suppress(FileNotFoundError):
                path.unlink()
        with suppress(OSError):
            store.ref_dir(ref).rmdir()

    @contextmanager
    def _write(self, action: str, ref: str) -> Iterator[datetime]:
        """One immediate transaction; a RuleViolation rolls back and is audited as refused."""
        now = self.clock.now()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield now
        except RuleViolation as exc:
            self.conn.execute("ROLLBACK")
            self.audit_refusal(action, ref, str(exc))
            raise
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def _audit(self, action: Action, refs: Sequence[str], **fields: Any) -> None:
        if self.audit is not None:
            self.audit.append(action, self.actor, refs=refs, **fields)

    def audit_refusal(self, action: str, ref: str | None, reason: str) -> None:
        """Record a refused request (rule violation) in the audit log; best effort when the
        log is not available (an uninitialised data directory)."""
        if self.audit is None:
            return
        with suppress(StoreError):
            self.audit.append(
                Action.AUTH_REFUSED,
                self.actor,
                refs=(ref,) if ref and rules.REF_RE.fullmatch(ref) else (),
                request=action,
                reason=reason,
            )

    def _require(self, ref: str) -> Authorisation:
        auth = load_one(self.conn, ref)
        if auth is None:
            raise RegistryError(f"no authorisation with reference {ref!r}")
        return auth

    def _append(
        self,
        ref: str,
        kind: EventKind,
        at: datetime,
        *,
        officer: Officer | None = None,
        text: str = "",
        expiry: datetime | None = None,
        investigators: Sequence[str] = (),
    ) -> None:
        self.conn.execute(
            "INSERT INTO auth_history(ref, kind, at, actor, officer, text, expiry, investigators)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ref,
                kind.value,
                format_utc(at),
                self.actor,
                json.dumps(officer.as_dict()) if officer else None,
                text,
                format_utc(expiry) if expiry else None,
                json.dumps(list(investigators)),
            ),
        )

    def _of_subject(self, subject: str) -> list[Authorisation]:
        return [a for a in load_all(self.conn) if a.subject == subject]

    def _investigator(self, name: str) -> investigators_table.Investigator | None:
        # A plain SELECT: investigators.get() runs executescript, which would commit the
        # transaction a change is in.
        row = self.conn.execute("SELECT * FROM investigators WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return investigators_table.Investigator(
            row["name"], row["principal"], row["recipient"], row["added_at"], row["removed_at"]
        )

    def _active_investigator(self, name: str) -> investigators_table.Investigator:
        inv = self._investigator(name)
        if inv is None or not inv.active:
            raise RuleViolation(
                f"investigator {name!r} is not registered (lbm keys investigator add)"
            )
        return inv

    # -- operations ----------------------------------------------------------------------------
    def grant(self, app: Application) -> Authorisation:
        """Record a standard or urgent grant and create its key pair (wrapped to the named
        investigators and the custodians)."""
        action = "urgent" if app.urgent else "grant"
        with ExitStack() as stack, self._write(action, app.ref) as now:
            rules.check_application(app)
            rules.resolve_start(app.start, now)
            existing = self.conn.execute(
                "SELECT ref FROM authorisations WHERE ref = ?", (app.ref,)
            ).fetchone()
            if existing is not None:
                raise RuleViolation(f"reference {app.ref} exists already ({existing['ref']})")
            named = [self._active_investigator(n) for n in app.investigators]
            for inv in named:
                rules.check_assign(app, inv.principal)
            if app.urgent:
                rules.check_urgent_chain(self._of_subject(app.subject), now)
            recipients = [inv.recipient for inv in named]
            expiry = rules.initial_expiry(app)
            public_key = self._make_key(app.ref, recipients + list(self.custodians))
            stack.callback(self._undo_key, app.ref)
            officer = app.officer
            self.conn.execute(
                "INSERT INTO authorisations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?, ?, ?)",
                (
                    app.ref,
                    app.subject,
                    app.case_type.value,
                    json.dumps([p.value for p in app.purposes]),
                    json.dumps([c.value for c in app.channels]),
                    officer.principal,
                    officer.name,
                    officer.role,
                    officer.rank.value,
                    int(app.urgent),
                    app.necessity,
                    app.proportionality,
                    app.collateral,
                    int(app.ripa_considered),
                    app.ripa_note,
                    format_utc(app.start),
                    json.dumps(list(app.investigators)),
                    int(app.open_do_not_decrypt),
                    app.retention_days,
                    public_key,
                    format_utc(now),
                    self.actor,
                ),
            )
            for name in app.investigators:
                self.conn.execute(
                    "INSERT INTO auth_assignments VALUES (?, ?, ?, ?)",
                    (app.ref, name, format_utc(now), self.actor),
                )
            kind = EventKind.URGENT if app.urgent else EventKind.GRANT
            self._append(
                app.ref, kind, now, officer=officer, expiry=expiry, investigators=app.investigators
            )
            self._audit(
                Action.AUTH_URGENT if app.urgent else Action.AUTH_GRANT,
                [app.ref],
                subject=app.subject,
                case_type=app.case_type.value,
                purposes=[p.value for p in app.purposes],
                channels=[c.value for c in app.channels],
                officer=officer.as_dict(),
                start=format_utc(app.start),
                expiry=format_utc(expiry),
                investigators=list(app.investigators),
                custodians=len(self.custodians),
                open_do_not_decrypt=app.open_do_not_decrypt,
                retention_days=app.retention_days,
                ripa_considered=app.ripa_considered,
                public_key=public_key,
                statements_sha256={
                    "necessity": sha256(app.necessity),
                    "proportionality": sha256(app.proportionality),
                    "collateral": sha256(app.collateral),
                    "ripa_note": sha256(app.ripa_note),
                },
            )
            stack.pop_all()  # recorded: keep the key
        return self._require(app.ref)

    def ratify(self, ref: str, officer: Officer, note: str = "") -> Authorisation:
        with self._write("ratify", ref) as now:
            auth = self._require(ref)
            expiry = rules.check_ratify(auth, officer, now)
            self._append(auth.ref, EventKind.RATIFY, now, officer=officer, text=note, expiry=expiry)
            self._audit(
                Action.AUTH_RATIFY,
                [auth.ref],
                officer=officer.as_dict(),
                expiry=format_utc(expiry),
                note_sha256=sha256(note),
            )
        return self._require(ref)

    def renew(self, ref: str, officer: Officer, results: str) -> Authorisation:
        with self._write("renew", ref) as now:
            auth = self._require(ref)
            expiry = rules.check_renew(
                auth, officer, results, now, window_days=self.renewal_window_days
            )
            self._append(
                auth.ref, EventKind.RENEW, now, officer=officer, text=results.strip(), expiry=expiry
            )
            self._audit(
                Action.AUTH_RENEW,
                [auth.ref],
                officer=officer.as_dict(),
                previous_expiry=format_utc(auth.expiry),
                expiry=format_utc(expiry),
                results_sha256=sha256(results.strip()),
            )
        return self._require(ref)

    def review(self, ref: str, officer: Officer, note: str) -> Authorisation:
        with self._write("review", ref) as now:
            auth = self._require(ref)
            rules.check_review(auth, officer, note, now)
            self._append(auth.ref, EventKind.REVIEW, now, officer=officer, text=note.strip())
            self._audit(
                Action.AUTH_REVIEW,
                [auth.ref],
                officer=officer.as_dict(),
                note_sha256=sha256(note.strip()),
            )
        return self._require(ref)

    def cancel(self, ref: str, reason: str, officer: Officer | None = None) -> Authorisation:
        with self._write("cancel", ref) as now:
            auth = self._require(ref)
            rules.check_cancel(auth, reason, now)
            self._append(auth.ref, EventKind.CANCEL, now, officer=officer, text=reason.strip())
            self._audit(
                Action.AUTH_CANCEL,
                [auth.ref],
                subject=auth.subject,
                officer=officer.as_dict() if officer else None,
                reason_sha256=sha256(reason.strip()),
                cancelled_at=format_utc(now),
            )
        return self._require(ref)

    def assign(self, ref: str, investigator: str) -> Authorisation:
        """Assign an investigator; the key follows when a holder runs `lbm keys rewrap`."""
        with self._write("assign", ref) as now:
            auth = self._require(ref)
            rules.check_assign(auth, self._active_investigator(investigator).principal)
            if investigator in assignees(self.conn, auth.ref):
                raise RuleViolation(f"investigator {investigator} is already assigned to {ref}")
            self.conn.execute(
                "INSERT INTO auth_assignments VALUES (?, ?, ?, ?)",
                (auth.ref, investigator, format_utc(now), self.actor),
            )
            self._append(auth.ref, EventKind.ASSIGN, now, investigators=(investigator,))
            self._audit(Action.AUTH_ASSIGN, [auth.ref], investigator=investigator, rewrap_due=True)
        return self._require(ref)

    def record_rewrap(self, ref: str, investigators: Sequence[str]) -> Authorisation:
        """Note that the authorisation key is now wrapped to exactly `investigators` (plus the
        custodians). Called by `lbm keys rewrap`, which audits the key operation itself."""
        with self._write("rewrap", ref) as now:
            auth = self._require(ref)
            self._append(auth.ref, EventKind.REWRAP, now, investigators=tuple(investigators))
        return self._require(ref)

    # -- queries -------------------------------------------------------------------------------
    def get(self, ref: str) -> Authorisation:
        return self._require(ref)

    def current_assignees(self, auth: Authorisation) -> tuple[str, ...]:
        """Assigned investigators who are still registered: whom a rewrap wraps to."""
        out = []
        for name in assignees(self.conn, auth.ref):
            inv = self._investigator(name)
            if inv is not None and inv.active:
                out.append(name)
        return tuple(out)

    def rewrap_due(self, auth: Authorisation) -> bool:
        return set(self.current_assignees(auth)) != set(auth.wrapped_to)

    def list(self, *, include_ended: bool = False) -> list[ListedAuthorisation]:
        now = self.clock.now()
        out = []
        for auth in load_all(self.conn):
            state = auth.state(now)
            due = self.rewrap_due(auth)  # investigators retrieve long after expiry too
            if not include_ended and state in ("expired", "cancelled") and not due:
                continue
            out.append(ListedAuthorisation(auth, state, rules.warnings(auth, now), due))
        return out
