"""The `lbm search --sql` sandbox: one SELECT over the search views, nothing else.

Two independent layers:

1. `check_select(sql, names)`: `duckdb.extract_statements` must give exactly one statement, of
   type SELECT (so no COPY, ATTACH, PRAGMA, SET, EXPLAIN, or a second statement after `;`).
   Its parse tree (`json_serialize_sql`) may then read only the views `names` and its own CTEs:
   no query node but SELECTs (DuckDB accepts `WITH x AS (DELETE ... RETURNING *) SELECT`, a
   statement of type SELECT), no table function (`read_parquet`, `read_csv`, `glob`,
   `duckdb_views()`...), no file named as a table (`FROM 'x.parquet'`), no qualified name
   (`information_schema.views`, `memory.main.web`), no DESCRIBE/SUMMARIZE. That is what keeps
   the clear values in the raw Parquet files, which the views pseudonymise, out of reach.
2. `lock_down(con, root)`: the connection itself may touch only `root` (nothing at all for an
   object-store root: its objects come through registered pyarrow datasets, search_remote.py):
   `SET allowed_directories=[root]`, then `SET enable_external_access=false`, then
   `SET lock_configuration=true`, as separate statements in that order (DuckDB 2.0 refuses them
   together in `connect(config=)`). Nothing can `SET` them back afterwards.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb


class SqlRefused(Exception):
    """The SQL is not a single SELECT over the views; the message says why."""


# Table references a SELECT over the views may contain (parse tree `from_table.type`).
# Query nodes of a read-only SELECT. DuckDB 2.0 parses `WITH w AS (DELETE ... RETURNING *)
# SELECT ...` as a SELECT statement whose CTE is a DELETE_QUERY_NODE: refused here.
_QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
# A view or CTE name: never a file name that DuckDB would scan in place of a table.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ALLOWED_REFS = frozenset({"BASE_TABLE", "JOIN", "SUBQUERY", "EMPTY", "EXPRESSION_LIST"})


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _cte_names(tree: Any) -> set[str]:
    names: set[str] = set()
    for node in _walk(tree):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            names.update(str(e.get("key", "")).lower() for e in cte_map.get("map", []))
    return names


def _is_table_ref(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    return (
        isinstance(kind, str)
        and "class" not in node
        and not kind.endswith(("_NODE", "_MODIFIER"))
        and ("sample" in node or "alias" in node)
    )


def check_select(sql: str, names: Iterable[str]) -> None:
    """Raise SqlRefused unless `sql` is one SELECT reading only the views `names`."""
    try:
        _check_select(sql, names)
    except RecursionError:  # json.loads or the walk: hundreds of nested subqueries
        raise SqlRefused("--sql is nested too deeply to check") from None


def _check_select(sql: str, names: Iterable[str]) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlRefused(f"--sql does not parse: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise SqlRefused(f"--sql must be exactly one statement (found {len(statements)})")
    stype = statements[0].type
    if stype != duckdb.StatementType.SELECT:
        raise SqlRefused(f"--sql must be a SELECT (found {stype.name})")
    con = duckdb.connect()
    try:
        raw = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    finally:
        con.close()
    tree = json.loads(raw[0]) if raw else {"error": True}
    if tree.get("error"):
        why = tree.get("error_message") or tree.get("error_type") or "not a plain SELECT"
        raise SqlRefused(f"--sql is not a plain SELECT: {why}")
    allowed = {n.lower() for n in names} | _cte_names(tree)
    for node in _walk(tree.get("statements", [])):
        kind = node.get("type")
        if isinstance(kind, str) and kind.endswith("_NODE") and kind not in _QUERY_NODES:
            raise SqlRefused(
                f"--sql must only read: it contains {kind.removesuffix('_NODE').lower()} "
                "(a CTE that writes)"
            )
        if not _is_table_ref(node) or "type" not in node:
            continue
        ref_type = str(node["type"])
        if ref_type not in _ALLOWED_REFS:
            what = "a table function" if ref_type == "TABLE_FUNCTION" else ref_type.lower()
            raise SqlRefused(
                f"--sql may read only the views {', '.join(sorted(names))}: it uses {what}"
            )
        if ref_type != "BASE_TABLE":
            continue
        table = str(node.get("table_name", ""))
        qualified = node.get("schema_name") or node.get("catalog_name")
        if qualified or not _NAME.match(table) or table.lower() not in allowed:
            raise SqlRefused(
                f"--sql may read only the views {', '.join(sorted(names))}, not {_quoted(node)}"
            )


def _quoted(node: dict[str, Any]) -> str:
    path = node.get("qualified_name", {}).get("path") or [node.get("table_name", "")]
    return repr(".".join(str(p) for p in path))[:120]


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def memory_limit_mib() -> int:
    """A quarter of this machine's memory: searches share the box with the daemons."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 2048
    return max(256, total // 4 // (1 << 20))


def lock_down(con: duckdb.DuckDBPyConnection, root: Path | None) -> None:
    """Limit `con` to reading under `root` (None: no file at all, for an object-store root
    whose datasets are registered already), then lock its configuration (order matters)."""
    con.execute("SET python_enable_replacements = false")  # no Python variable as a table
    con.execute("SET temp_directory = ''")  # never spill rows to disk (default: ./.tmp)
    # a runaway query (a recursive CTE that never ends) fails instead of starving the daemons
    con.execute(f"SET memory_limit = '{memory_limit_mib()}MiB'")
    con.execute("SET allowed_directories = ?", [[str(root)] if root is not None else []])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
