"""Tests for daydreamd.core.csvtable: decoding, CSV structure, line numbers and booleans."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daydreamd.core.csvtable import Row, Table, decode_text, parse_bool, read_table
from daydreamd.core.problems import Level, Problem

PATH = "1_raw/t.csv"


def rows_of(table: Table | None) -> list[tuple[int, dict[str, str]]]:
    """(line, cells) of each row, for compact comparisons."""
    assert table is not None
    return [(row.line, row.cells) for row in table.rows]


def only_problem(problems: list[Problem]) -> Problem:
    """The single problem, asserting there is exactly one and that it is an error on PATH."""
    assert len(problems) == 1, problems
    (problem,) = problems
    assert (problem.level, problem.path, problem.column) == (Level.ERROR, PATH, None)
    return problem


# --- decode_text -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"a\nb\n", "a\nb\n"),
        (b"\xef\xbb\xbfa\nb", "a\nb"),
        (b"a\r\nb\r\n", "a\nb\n"),
        (b"a\rb\r", "a\nb\n"),
        (b"\xef\xbb\xbfcaf\xc3\xa9\r\n", "café\n"),
        (b"", ""),
    ],
)
def test_decode_text_strips_bom_and_normalises_line_endings(data: bytes, text: str) -> None:
    """UTF-8 with or without BOM decodes; CRLF and lone CR become LF."""
    assert decode_text(PATH, data) == (text, [])


@pytest.mark.parametrize(
    ("data", "line"),
    [(b"\xff", 1), (b"ok\nok\n\xfe rest", 3), (b"ok\r\n\xc3(", 2), (b"ok\r\nok\r\n\xe9", 3)],
)
def test_decode_text_reports_line_of_first_bad_byte(data: bytes, line: int) -> None:
    """Non-UTF-8 input gives no text and one error naming the line of the first bad byte."""
    text, problems = decode_text(PATH, data)
    assert text is None
    problem = only_problem(problems)
    assert problem.line == line
    assert "UTF-8" in problem.message


def test_decode_text_bad_byte_line_is_right_after_a_bom() -> None:
    """A file with a BOM reports the bad byte on its real line, like the same file without a BOM."""
    _, problems = decode_text(PATH, b"\xef\xbb\xbf\n\n\n\xe9")
    assert only_problem(problems).line == 4


# --- read_table: what parses -------------------------------------------------------------------


def test_read_table_reads_header_and_rows_with_lines() -> None:
    """Header names and cells are stripped, and each row knows its 1-based file line."""
    table, problems = read_table(PATH, b" a , b \n1, x \n2,y\n", required=("a", "b"))
    assert problems == []
    assert table is not None
    assert (table.path, table.columns) == (PATH, ("a", "b"))
    assert rows_of(table) == [(2, {"a": "1", "b": "x"}), (3, {"a": "2", "b": "y"})]


def test_blank_lines_are_skipped_but_counted() -> None:
    """Blank lines (and rows of empty cells) are skipped, and later rows keep their real line."""
    table, problems = read_table(PATH, b"a,b\n\n1,2\n , \n\n3,4\n", required=("a",))
    assert problems == []
    assert rows_of(table) == [(3, {"a": "1", "b": "2"}), (6, {"a": "3", "b": "4"})]


def test_quoted_newlines_keep_the_record_start_line() -> None:
    """A quoted cell spanning lines belongs to the row where it starts; later rows are not shifted."""
    table, problems = read_table(PATH, b'a,b\n1,"x\ny\nz"\n2,w\n', required=("a", "b"))
    assert problems == []
    assert rows_of(table) == [(2, {"a": "1", "b": "x\ny\nz"}), (5, {"a": "2", "b": "w"})]


@pytest.mark.parametrize(
    "data",
    [
        b"a,b\n1,2\n",
        b"a,b\r\n1,2\r\n",
        b"\xef\xbb\xbfa,b\n1,2\n",
        b"\xef\xbb\xbfa,b\r\n1,2",
        b"a,b\r1,2\r",
    ],
)
def test_bom_and_line_endings_are_accepted(data: bytes) -> None:
    """A BOM, CRLF, CR or a missing final newline change nothing in what is read."""
    table, problems = read_table(PATH, data, required=("a", "b"))
    assert problems == []
    assert table is not None
    assert table.columns == ("a", "b")
    assert rows_of(table) == [(2, {"a": "1", "b": "2"})]


def test_extra_columns_are_kept() -> None:
    """Columns beyond the required ones are part of the table and of every row."""
    table, problems = read_table(PATH, b"a,b,score_max\n1,2,10\n", required=("a",))
    assert problems == []
    assert table is not None
    assert table.columns == ("a", "b", "score_max")
    assert table.rows[0].get("score_max") == "10"


def test_header_only_has_no_rows() -> None:
    """A file with just a header is a valid empty table."""
    table, problems = read_table(PATH, b"a,b\n", required=("a", "b"))
    assert problems == []
    assert table is not None
    assert table.rows == ()


def test_row_get_defaults_for_absent_columns() -> None:
    """Row.get returns the default for a column the file does not have."""
    row = Row(2, {"a": "1"})
    assert (row.get("a"), row.get("b"), row.get("b", "dflt")) == ("1", "", "dflt")


# --- read_table: what does not -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "line", "word"),
    [
        pytest.param(b"a,b\n1,\xff\n", 2, "UTF-8", id="not-utf8"),
        pytest.param(b"", 1, "empty", id="empty"),
        pytest.param(b"\n\n", 1, "empty", id="only-blank-lines"),
        pytest.param(b"a,c\n1,2\n", 1, "missing required column(s) b", id="missing-column"),
        pytest.param(b"a,b,a\n1,2,3\n", 1, "duplicate column name(s) a", id="duplicate-column"),
        pytest.param(b'a,b\n1,"x"y\n', 2, "does not parse", id="text-after-closing-quote"),
        pytest.param(b'a,b\n1,2\n3,"x" ,4\n', 3, "does not parse", id="space-after-closing-quote"),
        pytest.param(b'a,b\n1,"open', 2, "does not parse", id="unterminated-quote-at-end"),
    ],
)
def test_unusable_files_give_no_table_and_one_located_error(data: bytes, line: int, word: str) -> None:
    """A file that cannot be used as a table gives None and an error with its line and cause."""
    table, problems = read_table(PATH, data, required=("a", "b"))
    assert table is None
    problem = only_problem(problems)
    assert problem.line == line
    assert word in problem.message


def test_unterminated_quote_is_reported_where_it_opens() -> None:
    """An unterminated quote is reported on the line where its row starts, not at the end of the file."""
    table, problems = read_table(PATH, b'a,b\n1,"open\n2,3\n4,5\n6,7\n', required=("a", "b"))
    assert table is None
    assert only_problem(problems).line == 2


@pytest.mark.parametrize(
    ("data", "line", "fields"),
    [(b"a,b\n1,2\n1,2,3\n4,5\n", 3, 3), (b"a,b\n1\n4,5\n", 2, 1), (b"a,b\n1,2\n\n,x,,\n4,5\n", 4, 4)],
)
def test_row_with_wrong_field_count_is_dropped_and_reported(data: bytes, line: int, fields: int) -> None:
    """A row with too many or too few fields is an error on its line; the other rows are kept."""
    table, problems = read_table(PATH, data, required=("a", "b"))
    problem = only_problem(problems)
    assert problem.line == line
    assert f"row has {fields} fields but the header has 2" in problem.message
    assert table is not None
    assert all(row.line != line for row in table.rows)
    assert [row.get("a") for row in table.rows][-1] == "4"


# --- parse_bool --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("True", True),
        ("False", False),
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("no", False),
        ("TRUE", True),
        ("No", False),
        (" yes ", True),
        ("maybe", None),
        ("2", None),
        ("", None),
        ("y", None),
        ("t", None),
        ("on", None),
        ("-1", None),
    ],
)
def test_parse_bool(text: str, value: bool | None) -> None:
    """True/False/true/false/1/0/yes/no in any case are booleans; anything else is None."""
    assert parse_bool(text) is value


# --- never raises ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_read_table_never_raises_on_bytes(data: bytes) -> None:
    """Arbitrary bytes give a table or problems, never an exception."""
    table, problems = read_table(PATH, data, required=("a",))
    assert table is not None or problems


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list('ab,"\n\r \x00é')), max_size=80))
def test_read_table_never_raises_on_csv_like_text(text: str) -> None:
    """CSV-like text full of quotes, separators and line breaks never raises, and rows keep real lines."""
    table, problems = read_table(PATH, text.encode(), required=())
    assert table is not None or problems
    if table is not None:
        lines = [row.line for row in table.rows]
        assert lines == sorted(set(lines))
        assert all(line >= 2 for line in lines)
