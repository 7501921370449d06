"""`RecordSink` works through the narrow `RecordTarget` interface only: any object with `write`
and `end` will do, and the sink touches nothing private of anyone else. The public API the
channels call (`Archive.open_record(...) -> RecordSink`, `write`, `close() -> record_id`,
`store.ArchiveError`) is unchanged."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from store import ArchiveError, record_sink
from store.archive import Archive, RecordSink, RecordTarget


class ListTarget:
    """A RecordTarget that keeps what it is given, and fails on demand."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.data: list[bytes] = []
        self.ended: list[bool] = []
        self.fail_on = fail_on

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data) == self.fail_on:
            raise ArchiveError("segment X/000001: cannot write segment: disk full")
        self.data.append(bytes(data))

    def end(self, *, aborted: bool) -> None:
        self.ended.append(aborted)


def test_a_sink_needs_only_write_and_end() -> None:
    target = ListTarget()
    typed: RecordTarget = target
    sink = RecordSink(typed, "R/000001/1")
    sink.write(b"a")
    sink.write(memoryview(b"b"))
    assert sink.close() == "R/000001/1"
    assert target.data == [b"a", b"b"] and target.ended == [False]
    with pytest.raises(ArchiveError, match="write after close"):
        sink.write(b"c")
    with pytest.raises(ArchiveError, match="closed already"):
        sink.close()


def test_a_failed_write_ends_the_sink_and_the_target_is_not_ended_twice() -> None:
    target = ListTarget(fail_on=b"boom")
    with pytest.raises(ArchiveError, match="disk full"), RecordSink(target, "R/000001/2") as sink:
        sink.write(b"ok")
        sink.write(b"boom")
    assert target.ended == []  # the target dealt with its own failure
    target = ListTarget()
    with pytest.raises(RuntimeError), RecordSink(target, "R/000001/3") as sink:
        sink.write(b"x")
        raise RuntimeError("the channel failed")
    assert target.ended == [True]  # aborted record


def test_record_sink_reaches_into_nothing_private() -> None:
    tree = ast.parse(Path(inspect.getfile(record_sink)).read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not any(m.startswith("store.") for m in imported), imported
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            assert isinstance(node.value, ast.Name) and node.value.id == "self", ast.unparse(node)


def test_the_public_signature_is_unchanged() -> None:
    params = list(inspect.signature(Archive.open_record).parameters)
    assert params == ["self", "ref", "channel", "principal", "ts", "kind", "extra"]
    # `extra` (header fields such as the web flow id) is keyword-only and optional: channels
    # calling open_record(ref, channel, principal, ts, kind) are unaffected
    extra = inspect.signature(Archive.open_record).parameters["extra"]
    assert extra.kind is inspect.Parameter.KEYWORD_ONLY and extra.default is None
    assert inspect.signature(Archive.open_record).return_annotation in ("RecordSink", RecordSink)
    assert list(inspect.signature(RecordSink.close).parameters) == ["self", "aborted"]
