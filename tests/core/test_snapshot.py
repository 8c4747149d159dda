"""Reading ``1_raw`` from disk: any file name, a folder that vanishes, what the fingerprint sees."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from daydreamd.core.loader import load_experiment
from daydreamd.core.problems import Level
from daydreamd.core.snapshot import read_raw_dir

EXAMPLE_RAW = Path(__file__).parents[2] / "data" / "1_raw"


def touch(path: bytes, data: bytes = b"x") -> None:
    """Write ``data`` to a file whose name is bytes (it need not be valid UTF-8)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_a_file_name_that_is_not_utf8_is_an_error_naming_it_never_a_crash(tmp_path: Path) -> None:
    raw = tmp_path / "1_raw"
    shutil.copytree(EXAMPLE_RAW, raw)
    good = read_raw_dir(raw)
    touch(os.fsencode(raw) + b"/bad\xff.csv")
    (raw / os.fsdecode(b"dir\xfe")).mkdir()
    touch(os.fsencode(raw) + b"/dir\xfe/inside.txt")
    touch(os.fsencode(raw) + b"/.hidden\xff")  # hidden files are never read, whatever their name

    snapshot = read_raw_dir(raw)

    assert snapshot.fingerprint != good.fingerprint
    assert dict(snapshot.files) == dict(good.files)  # the good files are all still read
    _, problems = load_experiment(snapshot)
    errors = {p.path: p for p in problems if p.level is Level.ERROR}
    assert set(errors) == {"1_raw/bad\\xff.csv", "1_raw/dir\\xfe/"}, problems
    for problem in errors.values():
        assert "not valid UTF-8" in problem.message and "rename" in problem.message, problem
        problem.message.encode("ascii")  # printable anywhere: a log line, a terminal, JSON
        str(problem).encode("utf-8")
    assert "$'bad\\xff.csv'" in errors["1_raw/bad\\xff.csv"].message  # a shell command that renames it

    (raw / os.fsdecode(b"bad\xff.csv")).unlink()
    shutil.rmtree(os.fsencode(raw) + b"/dir\xfe")
    assert read_raw_dir(raw).fingerprint == good.fingerprint


def test_two_different_bad_names_have_different_fingerprints(tmp_path: Path) -> None:
    raw = tmp_path / "1_raw"
    raw.mkdir()
    touch(os.fsencode(raw) + b"/a\xff")
    first = read_raw_dir(raw).fingerprint
    (raw / os.fsdecode(b"a\xff")).rename(raw / os.fsdecode(b"a\xfe"))
    assert read_raw_dir(raw).fingerprint != first


def test_a_missing_folder_is_reported_as_missing(tmp_path: Path) -> None:
    snapshot = read_raw_dir(tmp_path / "1_raw")
    assert snapshot.missing and not snapshot.files
