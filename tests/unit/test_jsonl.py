"""align.jsonl: the one reader of JSON/JSONL records, its file:line errors and its tolerances."""

from __future__ import annotations

import json

import pytest

from align.errors import AlignError
from align.jsonl import EmptyFileError, iter_jsonl, read_records


def write(tmp_path, text: str | bytes, name: str = "data.jsonl"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_records_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = write(tmp_path, '{"a": 1}\n\n   \n{"a": 2}\r\n{"a": 3}')  # CRLF and no final newline are fine
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2}), (5, {"a": 3})]


def test_a_line_separator_inside_a_string_does_not_split_the_record(tmp_path):
    rec = {"text": "one\u2028two\x85three"}
    path = write(tmp_path, json.dumps(rec, ensure_ascii=False) + "\n")
    assert [r for _, r in iter_jsonl(path)] == [rec]


def test_a_bad_line_names_file_line_and_what_was_expected(tmp_path):
    path = write(tmp_path, '{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(AlignError, match=rf"^{path}:2: not valid JSON \(.*\); expected one JSON object per line$"):
        list(iter_jsonl(path))
    with pytest.raises(AlignError, match=r':2: not valid JSON .* like \{"id": \.\.\.\}$'):
        list(iter_jsonl(path, like='{"id": ...}'))


@pytest.mark.parametrize(("line", "kind"), [("[1, 2]", "array"), ('"text"', "string"), ("3.5", "number"),
                                            ("null", "null"), ("true", "boolean")])
def test_a_line_that_is_not_an_object_is_an_error(tmp_path, line, kind):
    path = write(tmp_path, '{"a": 1}\n' + line + "\n")
    with pytest.raises(AlignError, match=rf"^{path}:2: expected a JSON object, got a JSON {kind}$"):
        list(iter_jsonl(path))


def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
    path = write(tmp_path, b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(AlignError, match=rf"^{path}:2: not UTF-8 text"):
        list(iter_jsonl(path))


def test_a_torn_final_line_is_an_error_unless_the_caller_expects_kills(tmp_path):
    path = write(tmp_path, '{"a": 1}\n{"a": 2}\n{"a": 3, "b": "hal')
    with pytest.raises(AlignError, match=rf"^{path}:3: not valid JSON"):
        list(iter_jsonl(path))
    assert [r["a"] for _, r in iter_jsonl(path, torn_tail=True)] == [1, 2]
    # a cut in the middle of a multi-byte character is a torn line too
    path.write_bytes('{"a": 1}\n{"a": "é'.encode()[:-1])
    assert [r["a"] for _, r in iter_jsonl(path, torn_tail=True)] == [1]


def test_torn_tail_tolerates_only_the_last_line(tmp_path):
    path = write(tmp_path, '{"a": 1}\n{"a": \n{"a": 3}\n')  # a bad line with a newline after it: corruption
    with pytest.raises(AlignError, match=r":2: not valid JSON"):
        list(iter_jsonl(path, torn_tail=True))
    path.write_text('{"a": 1}\n{"a": \n')  # newline-terminated: the writer finished it, so it is corrupt
    with pytest.raises(AlignError, match=r":2: not valid JSON"):
        list(iter_jsonl(path, torn_tail=True))
    path.write_text('{"a": 1}\n[1, 2]')  # it parses: not a torn write, and not an object
    with pytest.raises(AlignError, match=r":2: expected a JSON object"):
        list(iter_jsonl(path, torn_tail=True))


def test_skip_bad_keeps_every_object_line(tmp_path):
    path = write(tmp_path, '{"a": 1}\n{oops\n[1]\n{"a": 4}\n{"a": 5')
    assert list(iter_jsonl(path, skip_bad=True)) == [(1, {"a": 1}), (4, {"a": 4})]


def test_a_missing_file_is_an_error_unless_missing_is_ok(tmp_path):
    with pytest.raises(AlignError, match="nope.jsonl: file not found"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))
    assert list(iter_jsonl(tmp_path / "nope.jsonl", missing_ok=True)) == []


def test_read_records_reads_json_lists_and_jsonl(tmp_path):
    listed = write(tmp_path, json.dumps([{"a": 1}, {"a": 2}], indent=2), "list.json")
    assert read_records(listed) == [(f"{listed} record 0", {"a": 1}), (f"{listed} record 1", {"a": 2})]
    lines = write(tmp_path, '{"a": 1}\n\n{"a": 2}\n', "lines.jsonl")
    assert read_records(lines) == [(f"{lines}:1", {"a": 1}), (f"{lines}:3", {"a": 2})]
    # a .jsonl file that holds a JSON list is read as one
    assert [r for _, r in read_records(write(tmp_path, '[{"a": 1}]', "odd.jsonl"))] == [{"a": 1}]


def test_read_records_errors(tmp_path):
    with pytest.raises(EmptyFileError, match="empty file; expected a JSON list"):
        read_records(write(tmp_path, "\n  \n", "empty.jsonl"))
    with pytest.raises(AlignError, match=r"bad.json:3: not valid JSON .*; expected a JSON list of records"):
        read_records(write(tmp_path, '[\n{"a": 1},\n{"a"}\n]', "bad.json"))
    with pytest.raises(AlignError, match="expected a JSON list of records, got a JSON object"):
        read_records(write(tmp_path, '{"a": 1}', "obj.json"))
    with pytest.raises(AlignError, match="record 1: expected a JSON object, got a JSON number"):
        read_records(write(tmp_path, '[{"a": 1}, 2]', "mixed.json"))
    with pytest.raises(AlignError, match=r"lines.jsonl:2: not valid JSON"):
        read_records(write(tmp_path, '{"a": 1}\n{"a": 2', "lines.jsonl"))  # strict: a torn tail is an error
