"""Options of the investigators' tools (issue 16) and of deployment (issue 17): retention,
evidence, the gateway's inside interface, the transparent scope and metrics."""

from __future__ import annotations

from appliance.config.option import Option, _between, _host_port_or_empty, _networks

OPERATIONS: list[Option] = [
    # -- investigators and scrutiny (issue 16) --
    *(
        Option(
            "retention",
            f"{stream}_days",
            int,
            days,
            f"days {stream} metadata rows are kept (by the partition's date)",
            _between(1, 36_500, "days"),
        )
        for stream, days in (("web", 180), ("email", 180), ("flow", 90), ("dns", 90))
    ),
    Option(
        "retention",
        "auto_apply",
        bool,
        False,
        "housekeeping removes what retention makes due (else it only reports it daily)",
    ),
    Option(
        "evidence",
        "allow_gateway_decrypt",
        bool,
        True,
        "allow `lbm archive export` to decrypt on the gateway (embedded default and demos; "
        "`lbm init --system` sets false: evidence leaves as a bundle for `lbm evidence open`)",
    ),
    # -- deployment (issue 17) --
    Option(
        "gateway",
        "inside_interface",
        str,
        "",
        "the interface facing the force network (transparent rules, capture of bypassed web)",
    ),
    Option(
        "gateway",
        "inside_networks",
        list,
        [],
        "the force's client networks (CIDR) whose web traffic is redirected in transparent mode",
        _networks,
        str,
    ),
    Option(
        "web",
        "transparent_scope",
        str,
        "all",
        "transparent mode: redirect all clients to the proxy, or only the current addresses of "
        "subjects with an active web authorisation (everyone else is forwarded by the kernel)",
        lambda v: None if v in ("all", "subjects") else "must be all or subjects",
    ),
    Option(
        "metrics",
        "listen",
        str,
        "127.0.0.1:0",
        "HOST:PORT where `lbm run` serves every daemon's counters (loopback; port 0 picks one, "
        "written to run/metrics.port); empty: not served",
        lambda v: _host_port_or_empty(v.replace(":0", ":1") if v.endswith(":0") else v),
    ),
    Option(
        "metrics",
        "disk_warn_free_percent",
        int,
        10,
        "`lbm status` warns when the data directory's file system has less free space than this",
        _between(1, 99, "percent"),
    ),
]
