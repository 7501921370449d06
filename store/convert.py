"""Rows to a stream's schema: `Converter` (the writers' per-batch conversion, with the checks
that no content column and no missing required value gets through) and `conform` (a stored
table or batch brought to the current schema). The schemas themselves are `store.schemas`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import pyarrow as pa

from store import SchemaError
from store.schemas import REQUIRED_COLUMNS, check_columns, schema

_EMPTY_LIST_COLUMNS = ("refs", "record_ids")
_CONVERT_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError)


def compute() -> ModuleType:
    """`pyarrow.compute`, imported at first use: its import (about 0.08 s, its functions made
    from the C++ registry) is left out of a writer's start-up, which mostly never needs it
    (rows arrive in their schema's types; docs/startup.md)."""
    import pyarrow.compute

    return pyarrow.compute


class Converter:
    """Python rows or columns -> a RecordBatch in the stream's schema, `gateway` filled in,
    missing `refs`/`record_ids` empty. Error messages name columns, never values."""

    def __init__(self, stream: str, gateway: str) -> None:
        self.stream = stream
        self.schema = schema(stream)
        self.struct = pa.struct(list(self.schema))
        self.gateway = gateway
        self._gateway = pa.scalar(gateway, pa.string())

    def rows(self, rows: list[Mapping[str, Any]]) -> tuple[pa.RecordBatch | None, list[str]]:
        """Convert rows whose names were checked; returns (batch, messages of refused rows).

        One call into pyarrow's dict-to-struct converter (measured faster than column-wise
        extraction in Python); only when it fails are columns and then rows checked one by one.
        """
        refused: list[str] = []
        if not rows:
            return None, refused
        try:
            arr = pa.array(rows, type=self.struct)
        except _CONVERT_ERRORS:
            rows, refused = self._drop_bad(rows)
            if not rows:
                return None, refused
            arr = pa.array(rows, type=self.struct)
        return self.finish(pa.RecordBatch.from_struct_array(arr).columns, len(rows)), refused

    def _drop_bad(self, rows: list[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[str]]:
        bad: set[int] = set()
        messages = []
        for field in self.schema:
            values = [r.get(field.name) for r in rows]
            try:
                pa.array(values, type=field.type)
                continue
            except _CONVERT_ERRORS:
                pass
            count = 0
            for i, value in enumerate(values):
                try:
                    pa.array([value], type=field.type)
                except _CONVERT_ERRORS:
                    bad.add(i)
                    count += 1
            messages.append(
                f"{count} row(s) refused: column {field.name!r} of metadata stream "
                f"{self.stream!r} has a value that is not {field.type}"
            )
        return [r for i, r in enumerate(rows) if i not in bad], messages

    def columns(self, data: pa.RecordBatch | pa.Table | Mapping[str, Any]) -> pa.RecordBatch | None:
        """Check and cast a batch of columns once; SchemaError names the offending column."""
        if isinstance(data, pa.Table | pa.RecordBatch):
            names, cols = list(data.schema.names), list(data.columns)
        else:
            names, cols = list(data.keys()), list(data.values())
        check_columns(self.stream, names)
        lengths = {len(c) for c in cols}
        if len(lengths) > 1:
            raise SchemaError(
                f"columns of a batch for metadata stream {self.stream!r} "
                f"differ in length: {sorted(lengths)}"
            )
        n = lengths.pop() if lengths else 0
        if n == 0:
            return None
        given = dict(zip(names, cols, strict=True))
        arrays: list[pa.Array] = []
        for field in self.schema:
            col = given.get(field.name)
            if col is None:
                if field.name in REQUIRED_COLUMNS:
                    raise SchemaError(
                        f"column {field.name!r} is required in metadata stream {self.stream!r}"
                    )
                arrays.append(pa.nulls(n, field.type))
                continue
            try:
                arr = col if isinstance(col, pa.Array | pa.ChunkedArray) else pa.array(col)
                if isinstance(arr, pa.ChunkedArray):
                    arr = arr.combine_chunks()
                arrays.append(arr if arr.type == field.type else compute().cast(arr, field.type))
            except _CONVERT_ERRORS:
                raise SchemaError(
                    f"column {field.name!r} of metadata stream {self.stream!r} "
                    f"does not convert to {field.type}"
                ) from None
            if field.name in REQUIRED_COLUMNS and arrays[-1].null_count:
                raise SchemaError(
                    f"column {field.name!r} is required in metadata stream "
                    f"{self.stream!r} (batch has nulls)"
                )
        gateways = arrays[self.schema.names.index("gateway")]
        if gateways.null_count < n and set(compute().unique(gateways.drop_null()).to_pylist()) != {
            self.gateway
        }:
            raise SchemaError(f"column 'gateway' is set by the writer ({self.gateway!r})")
        return self.finish(arrays, n)

    def finish(self, arrays: list[pa.Array], n: int) -> pa.RecordBatch:
        names = self.schema.names
        cols = list(arrays)
        cols[names.index("gateway")] = pa.repeat(self._gateway, n)
        for name in _EMPTY_LIST_COLUMNS:
            i = names.index(name)
            if cols[i].null_count:
                cols[i] = compute().fill_null(cols[i], pa.scalar([], self.schema.field(name).type))
        return pa.RecordBatch.from_arrays(cols, schema=self.schema)


def conform(stream: str, data: pa.Table | pa.RecordBatch) -> pa.Table:
    """Bring rows written under an earlier schema version to the current one: columns no longer
    in the schema are dropped, new ones are null, types are cast. For replay and compaction."""
    sch = schema(stream)
    table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
    if table.schema.equals(sch, check_metadata=False):
        return table.replace_schema_metadata(sch.metadata)
    cols = []
    for field in sch:
        if field.name in table.column_names:
            col = table.column(field.name)
            cols.append(col if col.type == field.type else compute().cast(col, field.type))
        else:
            cols.append(pa.nulls(table.num_rows, field.type))
        if field.name in _EMPTY_LIST_COLUMNS and cols[-1].null_count:
            cols[-1] = compute().fill_null(cols[-1], pa.scalar([], field.type))
    return pa.Table.from_arrays(cols, schema=sch)
