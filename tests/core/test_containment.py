"""Containment: what daydreamd reads stays inside ``1_raw``, and cohort ids stay one folder name.

Reading: a link that leaves ``1_raw`` (to ``/proc/self/environ``, to a file or a folder elsewhere)
and anything that is not a regular file (a FIFO, a socket) is refused, never opened, and
reported as an error naming the path; links that stay inside ``1_raw`` are followed. Cohort ids
from the config or ``DD_COHORT`` are checked against one pattern before anything uses them.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from daydreamd.core.build import build_from_raw
from daydreamd.core.config import load_settings
from daydreamd.core.errors import ConfigError
from daydreamd.core.ids import COHORT_ID_PATTERN, cohort_id_problem
from daydreamd.core.loader import load_experiment
from daydreamd.core.problems import Level, Problem
from daydreamd.core.snapshot import RawFiles, RefusedFileError, read_inside, read_raw_dir

EXAMPLE_RAW = Path(__file__).parents[2] / "data" / "1_raw"
LEAK_ROW = "leak,Leak,reads the environment,,llm,True\n"


@pytest.fixture(name="raw")
def _raw(tmp_path: Path) -> Path:
    """A private copy of the example experiment."""
    raw = tmp_path / "data" / "1_raw"
    shutil.copytree(EXAMPLE_RAW, raw)
    return raw


def errors_of(raw: RawFiles) -> dict[str, Problem]:
    _, problems = load_experiment(raw)
    return {p.path: p for p in problems if p.level is Level.ERROR}


def all_bytes(raw: RawFiles) -> bytes:
    return b"\n".join(raw.files.values())


def finishes(what: Callable[[], object], *, fifo: Path, timeout_s: float = 10.0) -> object:
    """``what()``, failing (not hanging) if it blocks: a reader stuck on ``fifo`` is released first."""
    result: list[object] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(what())
        except BaseException as exc:  # handed to the test below
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only because a reader is blocked
        os.close(fd)
        thread.join(timeout_s)
        pytest.fail(f"reading 1_raw blocked on the FIFO {fifo} for {timeout_s} s")
    if failure:
        raise failure[0]
    return result[0]


# ---- links out of 1_raw ---------------------------------------------------------------------------


def test_a_link_to_proc_self_environ_is_refused_and_never_read(raw: Path) -> None:
    """The reported attack: a draft template that is a link to the service's environment."""
    (raw / "templates/draft/leak.txt").symlink_to("/proc/self/environ")
    with (raw / "draft_templates.csv").open("a") as f:
        f.write(LEAK_ROW)

    snap = read_raw_dir(raw)

    assert "templates/draft/leak.txt" not in snap.files
    assert os.environ["PATH"].encode() not in all_bytes(snap)
    errors = errors_of(snap)
    problem = errors["1_raw/templates/draft/leak.txt"]
    assert "/proc/self/environ" in problem.message and "outside 1_raw/" in problem.message
    assert "copy the file in" in problem.message  # what to do
    assert not any("missing" in p.message for p in errors.values())  # reported once, as refused
    assert build_from_raw(snap, load_settings(None, {})).cohort is None


@pytest.mark.parametrize("relative_link", [False, True])
def test_a_link_to_a_file_outside_1_raw_is_refused(raw: Path, tmp_path: Path, relative_link: bool) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE\n")
    link = raw / "concepts/descriptions-paragraph/incubation.txt"
    link.unlink()
    link.symlink_to(os.path.relpath(secret, link.parent) if relative_link else secret)

    snap = read_raw_dir(raw)

    assert b"TOP-SECRET-VALUE" not in all_bytes(snap)
    problem = errors_of(snap)["1_raw/concepts/descriptions-paragraph/incubation.txt"]
    assert "outside 1_raw/" in problem.message and "symbolic link" in problem.message


def test_a_link_to_a_device_is_refused(raw: Path) -> None:
    (raw / "templates/draft/zero.txt").symlink_to("/dev/zero")  # reading it would never end
    snap = read_raw_dir(raw)
    assert "templates/draft/zero.txt" not in snap.files
    assert "outside 1_raw/" in errors_of(snap)["1_raw/templates/draft/zero.txt"].message


def test_a_linked_folder_outside_1_raw_is_refused_with_one_error(raw: Path, tmp_path: Path) -> None:
    """``templates/draft -> elsewhere``: nothing in it is read, and its templates are not also 'missing'."""
    elsewhere = tmp_path / "shared-drafts"
    shutil.move(raw / "templates/draft", elsewhere)
    (elsewhere / "bridge-sketch.txt").write_text("MARKER-FROM-OUTSIDE {{ concepts }}\n")
    (raw / "templates/draft").symlink_to(elsewhere, target_is_directory=True)
    (raw / "concepts/descriptions-etc").symlink_to("/etc", target_is_directory=True)

    snap = read_raw_dir(raw)

    assert not any(path.startswith("templates/draft/") for path in snap.files)
    assert not any(path.startswith("concepts/descriptions-etc/") for path in snap.files)
    assert b"MARKER-FROM-OUTSIDE" not in all_bytes(snap)
    errors = errors_of(snap)
    assert set(errors) == {"1_raw/templates/draft", "1_raw/concepts/descriptions-etc"}, errors
    assert "folder" in errors["1_raw/templates/draft"].message
    assert "/etc" in errors["1_raw/concepts/descriptions-etc"].message


def test_links_inside_1_raw_are_followed(raw: Path) -> None:
    """A link to a shared file or folder inside 1_raw is harmless: it is read like the file itself."""
    article = raw / "concepts/descriptions-article/incubation.txt"
    article.symlink_to("../descriptions-paragraph/incubation.txt")
    (raw / "shared").mkdir()
    shutil.move(raw / "templates/essay", raw / "shared/essay")
    (raw / "templates/essay").symlink_to("../shared/essay", target_is_directory=True)

    snap = read_raw_dir(raw)

    paragraph = (raw / "concepts/descriptions-paragraph/incubation.txt").read_bytes()
    assert snap.files["concepts/descriptions-article/incubation.txt"] == paragraph
    assert any(path.startswith("templates/essay/") for path in snap.files)
    assert not snap.refused and errors_of(snap) == {}


def test_a_loop_of_linked_folders_is_refused_not_walked_forever(raw: Path) -> None:
    (raw / "concepts/back-to-top").symlink_to("..", target_is_directory=True)
    (raw / "a").mkdir()
    (raw / "b").mkdir()
    (raw / "a/to-b").symlink_to("../b", target_is_directory=True)
    (raw / "b/to-a").symlink_to("../a", target_is_directory=True)

    snap = read_raw_dir(raw)

    errors = errors_of(snap)
    assert "loop" in errors["1_raw/concepts/back-to-top"].message
    assert any("loop" in p.message for path, p in errors.items() if path.startswith(("1_raw/a/", "1_raw/b/")))


# ---- files that are not regular files --------------------------------------------------------------


def test_a_fifo_in_templates_is_refused_without_blocking(raw: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the service must never do it."""
    fifo = raw / "templates/draft/bridge-sketch.txt"
    fifo.unlink()
    os.mkfifo(fifo)
    (raw / "templates/draft/piped.txt").symlink_to("bridge-sketch.txt")  # a link to it, inside 1_raw

    snap = finishes(lambda: read_raw_dir(raw), fifo=fifo)

    assert isinstance(snap, RawFiles)
    errors = errors_of(snap)
    assert "FIFO" in errors["1_raw/templates/draft/bridge-sketch.txt"].message
    assert "links to a FIFO" in errors["1_raw/templates/draft/piped.txt"].message
    assert not any("missing" in p.message for p in errors.values())


def test_a_socket_is_refused(raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(raw)  # a relative name: socket paths are short
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("editor.sock")
        snap = read_raw_dir(raw)
    assert "a socket" in errors_of(snap)["1_raw/editor.sock"].message


def test_a_file_swapped_for_a_fifo_after_the_check_is_refused(
    raw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOCTOU: the file is checked, then replaced by a FIFO before the open. The open does not
    block (O_NONBLOCK) and what was opened is checked again (fstat)."""
    target = raw / "concepts_metadata.csv"
    real_open = os.open

    swapped: list[str] = []

    def swap_then_open(path: str, flags: int, *args: int) -> int:
        if Path(path) == target.resolve():
            Path(path).unlink()
            os.mkfifo(path)
            swapped.append(path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", swap_then_open)  # delegates for every other path
    with pytest.raises(RefusedFileError) as caught:
        finishes(lambda: read_inside(raw, "concepts_metadata.csv"), fifo=target)
    assert swapped, "the open was not reached"
    assert "FIFO" in caught.value.reason and caught.value.relative == "concepts_metadata.csv"


def test_a_file_swapped_for_a_link_after_the_check_is_refused(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOCTOU: the file is checked, then replaced by a link out of 1_raw before the open (O_NOFOLLOW)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE\n")
    target = raw / "llm_models.csv"
    real_open = os.open

    swapped: list[str] = []

    def swap_then_open(path: str, flags: int, *args: int) -> int:
        if Path(path) == target.resolve():
            Path(path).unlink()
            Path(path).symlink_to(secret)
            swapped.append(path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", swap_then_open)  # delegates for every other path
    with pytest.raises(RefusedFileError, match="replaced"):
        read_inside(raw, "llm_models.csv")
    assert swapped, "the open was not reached"


def test_read_inside_reads_a_regular_file(raw: Path) -> None:
    assert read_inside(raw, "llm_models.csv") == (raw / "llm_models.csv").read_bytes()
    with pytest.raises(FileNotFoundError):
        read_inside(raw, "no-such-file.csv")


def test_refused_files_change_the_fingerprint(raw: Path) -> None:
    """Adding or removing a refused file is an edit like any other: the service rebuilds on it."""
    before = read_raw_dir(raw).fingerprint
    link = raw / "templates/draft/leak.txt"
    link.symlink_to("/proc/self/environ")
    assert read_raw_dir(raw).fingerprint != before
    link.unlink()
    assert read_raw_dir(raw).fingerprint == before


# ---- cohort ids ---------------------------------------------------------------------------------

BAD_COHORT_IDS = ["../../../x", "/abs", ".", "..", "a/b", "a\\b", "a\0b", "a b", "-x", ".hidden", "x" * 101]


@pytest.mark.parametrize("value", BAD_COHORT_IDS)
def test_a_cohort_id_from_dd_cohort_must_be_one_folder_name(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"DD_COHORT": value})
    message = str(caught.value)
    assert "DD_COHORT" in message and COHORT_ID_PATTERN in message


@pytest.mark.parametrize("value", [*BAD_COHORT_IDS, ""])
def test_a_cohort_id_from_the_config_must_be_one_folder_name(tmp_path: Path, value: str) -> None:
    config = tmp_path / "config.toml"
    escaped = value.replace("\\", "\\\\").replace("\0", "\\u0000")
    config.write_text(f'[experiment]\ncohort = "{escaped}"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {})
    message = str(caught.value)
    assert "experiment.cohort" in message and COHORT_ID_PATTERN in message


@pytest.mark.parametrize("value", ["pilot-2024-05", "cohort_3f2a9c1d0b7e", "v1.2", "A"])
def test_plain_cohort_ids_are_accepted(value: str) -> None:
    assert cohort_id_problem(value) is None
    assert load_settings(None, {"DD_COHORT": value}).experiment.cohort == value


def test_an_empty_dd_cohort_still_means_unset() -> None:
    """Documented: empty, 0, false, none, null unset the override (the content hash is used)."""
    assert load_settings(None, {"DD_COHORT": ""}).experiment.cohort is None
