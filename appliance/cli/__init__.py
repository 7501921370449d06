"""The `lbm` command line: one click group per concern, composed in `main`.

Dataclass methods come compiled from a cache (`codecache`), installed before any of the
modules below define their classes (start-up: docs/startup.md)."""

from appliance.cli import codecache

codecache.install()
