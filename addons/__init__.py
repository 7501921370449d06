"""mitmproxy addons for the web channel, one concern per module.

The chain (built by `appliance/cli/proxy_cmd.py`, run by `addons.master.ProxyRuntime` after
mitmproxy's own proxy addons): `limits.Limits`, `testing_hosts.TestingHosts`,
`identity.Identity`, `notice.Notice`, `decision.Decision`, `archiver.Archiver`,
`metadata.Metadata`. They share per-connection and per-request state through `addons.state`;
`addons.logfilter` keeps traffic bytes out of every log. Only this package imports mitmproxy.
"""
