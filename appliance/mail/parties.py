"""Who a message is about: direction, each recipient row's principal, the internal parties.

DECISIONS.md (Metadata streams, Wave 2 mail archive rule): mail whose envelope sender is in an
`internal_domains` domain is outbound and every row's principal is the sender; other mail is
inbound and a row's principal is its recipient's (null when the recipient resolves to nobody).
The internal parties, whose authorisations archive the message, are the sender of outbound mail
and every recipient that resolves to a principal. Addresses resolve through the identity map
(aliases included), never by assumption; the null sender `""` resolves to nobody.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

ResolveEmail = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Parties:
    direction: str  # "outbound" | "inbound"
    principals: dict[str, str | None]  # per recipient: the principal of that recipient's rows
    internal_parties: list[str]  # distinct principals whose authorisations may archive it
    sender_principal: str | None = None
    unresolved: int = 0  # addresses of internal parties that resolved to nobody


def domain_of(address: str) -> str:
    """The domain of `local@domain`, lower case, without a trailing dot ("" if none)."""
    _, at, domain = address.rpartition("@")
    return domain.strip().rstrip(".").lower() if at else ""


def is_internal(address: str, internal_domains: Iterable[str]) -> bool:
    domain = domain_of(address)
    if not domain:
        return False
    for item in internal_domains:
        d = item.strip().rstrip(".").lower()
        if domain == d:
            return True
    return False


def classify(
    mail_from: str,
    rcpts: Sequence[str],
    internal_domains: Iterable[str],
    resolve_email: ResolveEmail,
) -> Parties:
    """Direction, per-recipient principal and internal parties of one envelope."""
    domains = list(internal_domains)
    outbound = bool(mail_from) and is_internal(mail_from, domains)
    sender = resolve_email(mail_from) if mail_from else None
    unresolved = 1 if outbound and sender is None else 0
    by_rcpt = {rcpt: resolve_email(rcpt) for rcpt in dict.fromkeys(rcpts)}
    parties: list[str] = []
    if outbound and sender is not None:
        parties.append(sender)
    for rcpt, principal in by_rcpt.items():
        if principal is not None:
            parties.append(principal)
        elif is_internal(rcpt, domains):
            unresolved += 1
    principals = {r: (sender if outbound else by_rcpt[r]) for r in rcpts}
    return Parties(
        "outbound" if outbound else "inbound",
        principals,
        list(dict.fromkeys(parties)),
        sender if outbound else None,
        unresolved,
    )
