"""What ``status`` shows of the problems in ``1_raw``: all of a few, a bounded list of many."""

from __future__ import annotations

from daydreamd.core.problems import Problem, error, warning
from daydreamd.daemon.rebuild import MAX_PROBLEMS_SHOWN, Current


def problems(errors: int, warnings: int) -> tuple[Problem, ...]:
    found = [warning(f"1_raw/w{n}.txt", "a warning") for n in range(warnings)]
    return tuple(found + [error(f"1_raw/e{n}.txt", "an error") for n in range(errors)])


def test_a_few_problems_are_all_shown_errors_first() -> None:
    shown = Current(problems=problems(errors=2, warnings=1)).errors()
    assert [p.file for p in shown] == ["1_raw/e0.txt", "1_raw/e1.txt", "1_raw/w0.txt"]


def test_many_problems_are_cut_with_a_line_counting_the_rest() -> None:
    """A 1_raw pointed at / gives tens of thousands; each status answer carried them all (17 MB)."""
    shown = Current(problems=problems(errors=MAX_PROBLEMS_SHOWN + 30, warnings=20)).errors()
    assert len(shown) == MAX_PROBLEMS_SHOWN + 1
    assert all(p.level == "error" for p in shown[:MAX_PROBLEMS_SHOWN])
    last = shown[-1]
    assert last.level == "error" and last.file is None
    assert last.message is not None and "and 50 more problems (30 errors)" in last.message
