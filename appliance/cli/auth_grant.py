"""`lbm auth grant | urgent`: the application, from options or a TOML file (signed by the
authorising officer when the policy asks), built and granted (appliance/cli/auth_cmd.py
registers the commands)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from appliance.cli.app import App, emit
from appliance.cli.auth_common import json_option, open_registry
from appliance.cli.auth_common import signed as signed_file
from appliance.cli.auth_view import auth_dict
from appliance.cli.signed_files import read_file
from appliance.policy import InvalidInput, RuleViolation
from appliance.policy import application as application_form
from appliance.policy import officer_signatures as signatures
from appliance.policy.model import Officer


def application_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option(
            "--from-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="read the application's fields from a TOML file (options override)",
        ),
        click.option(
            "--signature",
            type=click.Path(dir_okay=False, path_type=Path),
            help="the authorising officer's SSHSIG over the --from-file application "
            "(ssh-keygen -Y sign -n lbm-ca1)",
        ),
        click.option("--ref", help="unique reference, e.g. CA1-2026-0042"),
        click.option("--subject", metavar="PRINCIPAL", help="principal to be monitored"),
        click.option("--case-type", help="criminal, officer_misconduct or staff_discipline"),
        click.option("--purpose", multiple=True, help="lawful purpose (repeat or comma list)"),
        click.option("--channel", multiple=True, help="web, email, packets (repeat or commas)"),
        click.option(
            "--officer",
            metavar="PRINCIPAL",
            help="authorising officer's principal (role and rank come from the officer register)",
        ),
        click.option("--necessity", metavar="TEXT"),
        click.option("--proportionality", metavar="TEXT"),
        click.option("--collateral", metavar="TEXT", help="collateral intrusion statement"),
        click.option("--ripa-considered", metavar="yes|no"),
        click.option("--ripa-note", metavar="TEXT"),
        click.option("--start", metavar="ISO8601", help="start (default now; never in the past)"),
        click.option(
            "--investigator",
            multiple=True,
            metavar="NAME",
            help="registered investigator (repeat or comma list)",
        ),
        click.option(
            "--open-do-not-decrypt",
            is_flag=True,
            default=None,
            help="also open servers on the do-not-decrypt list",
        ),
        click.option("--retention-days", type=int, metavar="N"),
        json_option,
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


REGISTER_FIELDS = ("officer_name", "officer_role", "officer_rank")
"""Fields the officer register supplies; an application may not state them."""


def read_application_file(path: Path, data: bytes) -> dict[str, Any]:
    raw = signatures.load_toml(data, str(path))
    for key in raw:
        if str(key).replace("-", "_") in REGISTER_FIELDS:
            raise InvalidInput(
                f"{path}: {key}: comes from the officer register (lbm officer show), "
                "not the application"
            )
    return application_form.normalise_fields(raw, f"{path}: ")


def do_grant(app: App, urgent: bool, options: dict[str, Any]) -> None:
    as_json = options.pop("as_json")
    from_file = options.pop("from_file")
    signature = options.pop("signature")
    request = "urgent" if urgent else "grant"
    with open_registry(app) as reg:
        signed = signed_file(from_file, signature, "--from-file")
        fields: dict[str, Any] = {}
        if from_file is not None:
            raw = signed.signed_bytes if signed else read_file(from_file, "application file")
            fields = read_application_file(from_file, raw)
        for key, value in options.items():
            if value not in (None, ()):
                if signed is not None:
                    name = "--" + key.replace("_", "-")
                    raise InvalidInput(
                        f"{name}: with --signature every field comes from the signed file"
                    )
                fields[key] = list(value) if isinstance(value, tuple) else value
        now = app.clock.now()

        def resolve(principal: str) -> Officer:
            return reg.officer_at(principal, now).officer

        try:
            try:
                application = application_form.build_application(
                    fields, urgent=urgent, now=now, resolve_officer=resolve
                )
            except RuleViolation as exc:
                if "role" not in str(exc) and "rank" not in str(exc):
                    raise
                officer = resolve(str(fields["officer"]))
                raise RuleViolation(
                    f"the officer register has {officer.principal} as {officer.role} "
                    f"({officer.rank.value}): {exc}"
                ) from None
        except RuleViolation as exc:
            ref = fields.get("ref")
            reg.audit_refusal(request, ref if isinstance(ref, str) else None, str(exc))
            raise
        auth = reg.grant(application, signed)
        data = auth_dict(auth, reg, app.clock.now(), detail=True)
    kind = "urgent authorisation" if urgent else "authorisation"
    emit(
        data,
        as_json,
        f"granted {kind} {auth.ref} for {auth.subject}: {data['start']} until {data['expiry']}",
    )
