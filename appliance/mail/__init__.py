"""The mail channel: an SMTP relay (aiosmtpd) that spools, relays byte-exact and archives only
subjects' mail.

Modules, one concern each: `engine` (our aiosmtpd `SMTP` subclass: banner, line length,
connection limit), `handler` (the SMTP dialogue hooks: relay control, limits, smuggling, the end of
DATA), `parties` (direction, principals, internal parties), `auth` (AUTH PLAIN/LOGIN against the
users file), `tls` (the SMTP service certificate), `message` (Received line, Message-ID hash),
`archiving` (subjects' copies), `refusals` (in-memory counters), `service` (the daemon's loop:
listen, readiness, graceful stop); `spool`, `delivery`, `smtp_client`, `dsn`, `maildrop`, `rows`
(mail-delivery). This package imports `appliance.policy` and `store` only.
"""
