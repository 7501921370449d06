"""The configuration schema: every section and key, its type, default and one-line help.

Later capabilities add their options here, to the section DECISIONS.md gives them.
"""

from __future__ import annotations

from appliance.config.do_not_decrypt import DO_NOT_DECRYPT_CATEGORIES, check_categories
from appliance.config.option import (
    ID_RE,
    MAX_ID_LENGTH,
    Option,
    Validator,
    _age_recipients,
    _between,
    _hostname,
    _id,
    _networks,
    _port,
)
from appliance.config.schema_capture import CAPTURE_LIMITS
from appliance.config.schema_operations import OPERATIONS
from appliance.config.schema_smtp import SMTP
from appliance.config.schema_storage import STORAGE

__all__ = ["BY_NAME", "ID_RE", "MAX_ID_LENGTH", "SCHEMA", "SECTIONS", "Option", "Validator"]


SECTIONS: dict[str, str] = {
    "gateway": "this gateway's identity",
    "web": "the intercepting web proxy",
    "smtp": "the SMTP relay",
    "capture": "the packet capture path",
    "archive": "archived content of subjects (every channel)",
    "identity": "the identity feed that maps IPs, usernames and addresses to principals",
    "notice": "the acceptable-use notice shown to users",
    "keys": "archive key custody",
    "retention": "how long archived content is kept",
    "do_not_decrypt": "servers passed through unopened even for subjects",
    "audit": "the audit log",
    "policy": "how authorisations are checked (officer signatures, renewal window)",
    "housekeeping": "the housekeeping daemon (expiry warnings, segment closing, compaction)",
    "evidence": "how evidence leaves the gateway (bundles, exports)",
    "metrics": "status and Prometheus counters served on one loopback port",
    "store": "where metadata, sealed archives and wrapped keys live: local disk or S3",
    "testing": "test-only switches; never enable on a live gateway",
}

SCHEMA: list[Option] = [
    Option("gateway", "id", str, "gw1", "gateway id, part of every file name", _id),
    Option("web", "enabled", bool, False, "run the web proxy under `lbm run`"),
    Option("web", "listen_host", str, "127.0.0.1", "address the proxy listens on"),
    Option(
        "web", "listen_port", int, 0, "proxy port (0: pick one, written to run/proxy.port)", _port
    ),
    # -- [web] options of the proxy daemon (web-core) --
    Option(
        "web",
        "mode",
        str,
        "explicit",
        "explicit (clients configured with the proxy) or transparent (traffic redirected to it)",
        lambda v: None if v in ("explicit", "transparent") else "must be explicit or transparent",
    ),
    Option(
        "web",
        "auth",
        bool,
        False,
        "explicit mode: require proxy authentication (users file); else principal by client IP",
    ),
    Option(
        "web",
        "upstream_ca_file",
        str,
        "",
        "PEM file of extra trust anchors for upstream servers (added to the system's; tests)",
    ),
    Option(
        "web",
        "pinned_client_window_seconds",
        int,
        3600,
        "after a subject's client refuses our certificate for a server, its connections to that "
        "server are passed through unopened for this long (rows say error_kind=pinned_fallback)",
        _between(0, 604_800, "seconds"),
    ),
    Option(
        "web",
        "max_header_bytes",
        int,
        65_536,
        "largest HTTP/1 request head accepted; larger gets 431 and the connection closes",
        _between(1_024, 16_777_216, "bytes"),
    ),
    Option(
        "web",
        "max_connections_per_client",
        int,
        256,
        "open connections one client IP may hold; more are refused (too_many_connections)",
        _between(1, 1_000_000),
    ),
    Option(
        "web",
        "header_timeout_seconds",
        int,
        30,
        "a connection must send its first request head or TLS ClientHello within this time",
        _between(1, 3_600, "seconds"),
    ),
    Option(
        "web",
        "idle_timeout_seconds",
        int,
        600,
        "an idle connection is closed after this many seconds",
        _between(1, 86_400, "seconds"),
    ),
    *SMTP,
    Option("capture", "interfaces", list, [], "interfaces captured by `lbm run`", None, str),
    Option(
        "capture",
        "internal_networks",
        list,
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"],
        "address ranges of the force network (the internal side of a flow)",
        _networks,
        str,
    ),
    Option(
        "capture",
        "max_flows",
        int,
        500_000,
        "live flows kept per capture; beyond it the least recently active flow is ended early "
        "and counted (about 1 KiB of memory a flow)",
        _between(1, 100_000_000),
    ),
    Option("identity", "feed", str, "", "lease/logon feed file (CSV or JSON) imported on change"),
    # web-auth (issue 14): the users file and the notice host
    Option(
        "identity",
        "users_file",
        str,
        "users",
        "htpasswd users file (bcrypt, optional :smtp flag) for proxy authentication and SMTP "
        "AUTH, managed with `lbm users`; relative to the data directory",
    ),
    Option(
        "notice",
        "host",
        str,
        "notice.lbm.invalid",
        "host name the proxy answers itself with the notice page (HTTP and HTTPS)",
        _hostname,
    ),
    Option("notice", "version", str, "2026-01", "version of the acceptable-use notice in force"),
    Option(
        "notice",
        "text",
        str,
        "This system is monitored for lawful business purposes. "
        "See the force's acceptable-use policy.",
        "acceptable-use notice shown in the SMTP banner and on the notice page",
    ),
    Option(
        "keys",
        "custodians",
        list,
        [],
        "age recipients (age1...) that can always unwrap authorisation keys",
        _age_recipients,
        str,
    ),
    Option(
        "retention",
        "default_days",
        int,
        365,
        "days archived content is kept after its authorisation ends, unless the "
        "authorisation says otherwise (--retention-days)",
        _between(1, 36_500, "days"),
    ),
    Option(
        "retention",
        "review_days",
        int,
        90,
        "days between retention reviews",
        _between(1, 3_650, "days"),
    ),
    Option(
        "do_not_decrypt",
        "hosts",
        list,
        [
            "*.nhs.uk",
            "*.barclays.co.uk",
            "*.lloydsbank.co.uk",
            "*.lawsociety.org.uk",
            "*.unison.org.uk",
            "*.police-federation.org.uk",
        ],
        "server names (glob) never opened unless an authorisation opens them",
        None,
        str,
    ),
    Option(
        "do_not_decrypt",
        "categories",
        list,
        list(DO_NOT_DECRYPT_CATEGORIES),
        "more server names never opened, as CATEGORY:GLOB (health, banking, legal_advice, "
        "trade_union, welfare, or a category of your own); both lists apply",
        check_categories,
        str,
    ),
    Option(
        "audit",
        "syslog",
        bool,
        True,
        "also write each new audit head to the system journal (an off-box witness)",
    ),
    Option(
        "audit",
        "witness_socket",
        str,
        "/dev/log",
        "the journal's syslog socket (unix datagram) that audit heads are written to",
        lambda v: None if v.startswith("/") else "must be an absolute path",
    ),
    Option(
        "policy",
        "require_officer_signature",
        bool,
        False,
        "CA1 applications and ratify/renew/review statements must be signed (SSHSIG) by the "
        "acting officer's registered key, and officer-register changes by a register signer",
    ),
    Option(
        "policy",
        "register_signers",
        str,
        "",
        "OpenSSH allowed-signers file whose keys may sign officer-register changes",
    ),
    Option(
        "policy",
        "renewal_window_days",
        int,
        30,
        "a renewal is accepted only this many days (or fewer) before the current expiry",
        _between(1, 366, "days"),
    ),
    Option("housekeeping", "enabled", bool, True, "run the housekeeping daemon under `lbm run`"),
    Option(
        "housekeeping",
        "interval_seconds",
        int,
        30,
        "seconds between housekeeping passes",
        _between(1, 86_400, "seconds"),
    ),
    Option(
        "testing",
        "fake_clock",
        bool,
        False,
        "honour LBM_FAKE_NOW (tests move time); never on a live gateway",
    ),
    Option(
        "testing",
        "hosts",
        list,
        [],
        "NAME=IP pairs the proxy connects to instead of resolving NAME (honoured only with "
        "fake_clock = true); never on a live gateway",
        None,
        str,
    ),
    *OPERATIONS,
    *CAPTURE_LIMITS,
    *STORAGE,
]

BY_NAME: dict[str, Option] = {opt.name: opt for opt in SCHEMA}
