"""Options of `[smtp]` (issues 3 and 15): the relay's listener, the receiving side (TLS, AUTH,
limits) and delivery to the next hop or the embedded maildrop. Spliced into
`appliance.config.schema.SCHEMA` where the section stands."""

from __future__ import annotations

from appliance.config.option import (
    Option,
    _between,
    _domains,
    _host_port_or_empty,
    _networks,
    _port,
    _starttls_mode,
)

SMTP: list[Option] = [
    Option("smtp", "enabled", bool, False, "run the SMTP relay under `lbm run`"),
    Option("smtp", "listen_host", str, "127.0.0.1", "address the relay listens on"),
    Option(
        "smtp", "listen_port", int, 0, "relay port (0: pick one, written to run/smtp.port)", _port
    ),
    Option(
        "smtp",
        "internal_domains",
        list,
        ["force.example"],
        "sender domains of the force: their mail is outbound",
        _domains,
        str,
    ),
    # -- mail delivery (issue 15, mail-delivery) --
    Option(
        "smtp",
        "upstream_host",
        str,
        "",
        "next hop for relayed mail (empty: deliver to the local maildrop maildir)",
    ),
    Option("smtp", "upstream_port", int, 25, "port of the next hop", _port),
    Option(
        "smtp",
        "upstream_starttls",
        str,
        "required",
        "STARTTLS to the next hop: required (certificate verified) or optional (used if offered,"
        " verified too)",
        _starttls_mode,
    ),
    Option("smtp", "upstream_ca_file", str, "", "extra trust anchors for the next hop (tests)"),
    Option("smtp", "upstream_user", str, "", "AUTH PLAIN user at the next hop (empty: no AUTH)"),
    Option("smtp", "upstream_password_file", str, "", "file holding the next hop's AUTH password"),
    Option(
        "smtp",
        "retry_initial_seconds",
        int,
        60,
        "first retry delay after a 4xx or connection failure (doubles each attempt)",
        _between(1, 86400, "seconds"),
    ),
    Option(
        "smtp",
        "retry_max_seconds",
        int,
        3600,
        "longest delay between retries",
        _between(1, 86400, "seconds"),
    ),
    Option(
        "smtp",
        "lifetime_hours",
        int,
        120,
        "how long a message is retried before it bounces",
        _between(1, 720, "hours"),
    ),
    Option(
        "smtp",
        "return_route",
        str,
        "",
        "host:port DSNs go through (empty: the upstream, or the maildrop)",
        _host_port_or_empty,
    ),
    Option("smtp", "maildrop", str, "./lbm-maildrop", "maildir the embedded default delivers to"),
    Option(
        "smtp",
        "delivery_concurrency",
        int,
        8,
        "messages delivered in parallel",
        _between(1, 256),
    ),
    # -- mail-server (issue 15): the receiving side of the relay
    Option(
        "smtp",
        "tls_cert",
        str,
        "",
        "STARTTLS certificate chain (PEM); empty: keys/smtp.crt, self-signed by `lbm init`",
    ),
    Option("smtp", "tls_key", str, "", "key of tls_cert (PEM, 0600); empty: keys/smtp.key"),
    Option(
        "smtp",
        "allowed_clients",
        list,
        ["127.0.0.0/8", "::1/128"],
        "networks that may relay without AUTH (the force's mail servers); others get 554",
        _networks,
        str,
    ),
    Option(
        "smtp",
        "max_message_bytes",
        int,
        64 * 1024 * 1024,
        "largest message accepted (DATA payload; held in memory while received)",
        _between(1024, 1024 * 1024 * 1024, "bytes"),
    ),
    Option(
        "smtp",
        "max_recipients",
        int,
        100,
        "recipients per message; more get 452 4.5.3",
        _between(1, 100_000),
    ),
    Option(
        "smtp",
        "max_connections",
        int,
        200,
        "concurrent SMTP connections; more get 421 4.7.0",
        _between(1, 100_000),
    ),
]
