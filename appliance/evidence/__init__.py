"""What investigators, the audit officer and the scrutiny body use (issue 16).

One module per job: `access` (who may act on a reference), search, bundle and opening, export
formats, collateral removal, retention, the scrutiny report. Imports `appliance.policy` and
`store` only; the commands in `appliance/cli/` are thin.
"""
