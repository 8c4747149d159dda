"""Containment: what daydreamd reads stays inside ``1_raw``, and cohort ids stay one folder name.

Reading: a link that leaves ``1_raw`` (to ``/proc/self/environ``, to a file or a folder elsewhere)
and anything that is not a regular file (a FIFO, a socket) is refused, never opened, and
reported as an error naming the path; links that stay inside ``1_raw`` are followed. The walk
holds a descriptor for ``1_raw`` and each folder in it, so re-pointing ``1_raw`` or swapping a
folder for a link while it runs changes nothing it reads (tested by changing the tree from the
walk's ``before_open`` hook, at a known moment). Files over the size limits are refused from
their size, unread. Cohort ids from the config or ``DD_COHORT`` are checked against one pattern
before anything uses them.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daydreamd.core.build import build_from_raw
from daydreamd.core.config import load_settings
from daydreamd.core.errors import ConfigError
from daydreamd.core.ids import COHORT_ID_PATTERN, cohort_id_problem
from daydreamd.core.loader import load_experiment
from daydreamd.core.problems import Level, Problem
from daydreamd.core.snapshot import (
    MAX_DEPTH,
    MAX_ENTRIES,
    MAX_FILE_BYTES,
    MAX_TOTAL_BYTES,
    RawFiles,
    openat2_available,
    read_raw_dir,
    read_raw_fd,
)

EXAMPLE_RAW = Path(__file__).parents[2] / "data" / "1_raw"
LEAK_ROW = "leak,Leak,reads the environment,,llm,True\n"
needs_openat2 = pytest.mark.skipif(
    not openat2_available(), reason="links are followed only where the kernel has openat2"
)


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


@needs_openat2
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


@needs_openat2
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


@needs_openat2
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


def swap_at(relative: str, swap: Callable[[], None]) -> Callable[[str], None]:
    """A ``before_open`` hook that runs ``swap()`` once, just before the walk opens ``relative``."""
    done: list[str] = []

    def hook(opening: str) -> None:
        if opening == relative and not done:
            done.append(opening)
            swap()

    return hook


def read_with(raw: Path, **kwargs: Any) -> RawFiles:
    """``read_raw_fd`` on ``raw`` opened once (as ``read_raw_dir`` does), with the walk's options."""
    fd = os.open(raw, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return read_raw_fd(fd, label=raw.name, **kwargs)
    finally:
        os.close(fd)


def test_a_file_swapped_for_a_fifo_before_the_open_is_refused(raw: Path) -> None:
    """TOCTOU: listed as a file, replaced by a FIFO before the open. The open does not block
    (O_NONBLOCK) and what was opened is checked again (fstat)."""
    target = raw / "concepts_metadata.csv"

    def swap() -> None:
        target.unlink()
        os.mkfifo(target)

    snap = finishes(lambda: read_with(raw, before_open=swap_at("concepts_metadata.csv", swap)), fifo=target)

    assert isinstance(snap, RawFiles)
    assert "concepts_metadata.csv" not in snap.files
    assert "FIFO" in dict(snap.refused)["concepts_metadata.csv"]


def test_a_file_swapped_for_a_link_before_the_open_is_refused(raw: Path, tmp_path: Path) -> None:
    """TOCTOU: listed as a file, replaced by a link out of 1_raw before the open (O_NOFOLLOW)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE\n")
    target = raw / "llm_models.csv"

    def swap() -> None:
        target.unlink()
        target.symlink_to(secret)

    snap = read_with(raw, before_open=swap_at("llm_models.csv", swap))

    assert b"TOP-SECRET-VALUE" not in all_bytes(snap)
    assert "replaced" in dict(snap.refused)["llm_models.csv"]


# ---- races on folders: the walk holds descriptors, never re-resolves a path ------------------------


def outside_tree(tmp_path: Path) -> Path:
    """A copy of the example experiment outside 1_raw with a marker in every file."""
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(EXAMPLE_RAW, elsewhere)
    for path in elsewhere.rglob("*"):
        if path.is_file():
            path.write_bytes(b"MARKER-FROM-OUTSIDE\n" + path.read_bytes())
    return elsewhere


def test_1_raw_re_pointed_after_it_was_opened_does_not_change_what_is_read(raw: Path, tmp_path: Path) -> None:
    """The reviewed attack re-pointed 1_raw while its real path was computed. Now 1_raw is opened
    once and the walk goes on from that descriptor: re-pointing the name, even mid-walk, changes
    nothing in this snapshot (the next one reads the new target)."""
    expected = read_raw_dir(raw)
    elsewhere = outside_tree(tmp_path)
    link = tmp_path / "data" / "1_raw.link"
    link.symlink_to(raw, target_is_directory=True)

    def re_point() -> None:
        raw.rename(tmp_path / "data" / "1_raw.old")
        raw.symlink_to(elsewhere, target_is_directory=True)
        link.unlink()
        link.symlink_to("/", target_is_directory=True)

    snap = read_with(link, before_open=swap_at("concepts/descriptions-paragraph", re_point))

    assert link.readlink() == Path("/") and raw.is_symlink()  # the swap happened mid-walk
    assert b"MARKER-FROM-OUTSIDE" not in all_bytes(snap)
    assert dict(snap.files) == dict(expected.files) and not snap.refused
    assert b"MARKER-FROM-OUTSIDE" in all_bytes(read_raw_dir(raw))  # the next snapshot: the new target


def test_a_folder_swapped_for_a_link_before_it_is_opened_is_not_followed(raw: Path, tmp_path: Path) -> None:
    """``templates/`` listed as a folder, then replaced by a link out of 1_raw: the open (relative
    to the folder's descriptor, O_NOFOLLOW) refuses it; nothing of the outside tree is read."""
    elsewhere = outside_tree(tmp_path)

    def swap() -> None:
        (raw / "templates").rename(tmp_path / "templates.moved")
        (raw / "templates").symlink_to(elsewhere / "templates", target_is_directory=True)

    snap = read_with(raw, before_open=swap_at("templates", swap))

    assert (raw / "templates").is_symlink()
    assert b"MARKER-FROM-OUTSIDE" not in all_bytes(snap)
    assert not any(path.startswith("templates/") for path in snap.files)
    assert "replaced" in dict(snap.refused)["templates"]


@needs_openat2
def test_a_folder_swapped_for_a_link_while_it_is_read_leaks_nothing(raw: Path, tmp_path: Path) -> None:
    """``templates/`` replaced by a link out of 1_raw while the walk is inside it: the walk goes on
    in the folder it holds open (no path is resolved again), and a link in it, resolved by the
    kernel beneath 1_raw's descriptor, cannot go through the new ``templates`` link."""
    elsewhere = outside_tree(tmp_path)
    (raw / "templates/draft/shared.txt").symlink_to("../../llm_models.csv")
    (elsewhere / "llm_models.csv").write_text("MARKER-FROM-OUTSIDE\n")
    originals = {
        f"templates/draft/{p.name}": p.read_bytes()
        for p in (raw / "templates/draft").iterdir()
        if p.is_file() and not p.is_symlink()
    }

    def swap() -> None:
        (raw / "templates").rename(tmp_path / "templates.moved")
        (raw / "templates").symlink_to(
            os.path.relpath(elsewhere / "templates", raw), target_is_directory=True
        )

    first = min(originals)
    snap = read_with(raw, before_open=swap_at(first, swap))

    assert (raw / "templates").is_symlink()
    assert b"MARKER-FROM-OUTSIDE" not in all_bytes(snap)
    assert {path: snap.files[path] for path in originals} == originals  # read from the folder held open
    assert "outside 1_raw/" in dict(snap.refused)["templates/draft/shared.txt"]


@needs_openat2
def test_link_chains_cannot_leave_1_raw(raw: Path, tmp_path: Path) -> None:
    """A chain of links (each step inside 1_raw) whose last step leaves it, a chain of links
    through folders with ``..`` climbing above 1_raw, and a loop of links: all refused."""
    (tmp_path / "secret.txt").write_text("TOP-SECRET-VALUE\n")
    chain = raw / "chain"
    chain.mkdir()
    (chain / "c0").symlink_to("c1")
    for i in range(1, 10):
        (chain / f"c{i}").symlink_to(f"../chain/c{i + 1}")
    (chain / "c10").symlink_to("../../secret.txt")
    (chain / "up").symlink_to("../chain/../chain/../concepts/../..", target_is_directory=True)
    (chain / "via-up.txt").symlink_to("up/secret.txt")
    (chain / "loop-a").symlink_to("loop-b")
    (chain / "loop-b").symlink_to("loop-a")

    snap = read_raw_dir(raw)

    assert b"TOP-SECRET-VALUE" not in all_bytes(snap)
    refused = dict(snap.refused)
    assert all("outside 1_raw/" in refused[f"chain/c{i}"] for i in range(11))
    assert "outside 1_raw/" in refused["chain/up"] and "outside 1_raw/" in refused["chain/via-up.txt"]
    assert "loop of links" in refused["chain/loop-a"] and "loop of links" in refused["chain/loop-b"]


@needs_openat2
def test_an_absolute_link_is_refused_even_into_1_raw(raw: Path) -> None:
    """The kernel resolves links beneath 1_raw's descriptor, where an absolute path has no meaning."""
    (raw / "concepts/descriptions-article/incubation.txt").symlink_to(
        raw / "concepts/descriptions-paragraph/incubation.txt"
    )
    message = dict(read_raw_dir(raw).refused)["concepts/descriptions-article/incubation.txt"]
    assert "absolute path" in message and "make the link relative" in message


def test_without_openat2_no_link_is_followed(raw: Path, tmp_path: Path) -> None:
    """Where the kernel cannot resolve a link beneath 1_raw, every link is refused (files are still read)."""
    (raw / "concepts/descriptions-article/incubation.txt").symlink_to(
        "../descriptions-paragraph/incubation.txt"
    )
    (raw / "templates/draft/leak.txt").symlink_to("/proc/self/environ")
    (raw / "shared").symlink_to("templates", target_is_directory=True)

    snap = read_with(raw, follow_links=False)

    assert os.environ["PATH"].encode() not in all_bytes(snap)
    refused = dict(snap.refused)
    assert set(refused) == {
        "concepts/descriptions-article/incubation.txt",
        "templates/draft/leak.txt",
        "shared",
    }
    assert all("openat2" in reason and "copy the" in reason for reason in refused.values())
    assert "copy the folder in" in refused["shared"]
    assert dict(snap.files) == dict(read_raw_dir(EXAMPLE_RAW).files)


def test_1_raw_itself_may_be_a_link(raw: Path, tmp_path: Path) -> None:
    """Documented: data/1_raw may point at another folder (followed once, at the open)."""
    pointed = tmp_path / "pointed" / "1_raw"
    pointed.parent.mkdir()
    pointed.symlink_to(raw, target_is_directory=True)
    snap = read_raw_dir(pointed)
    assert dict(snap.files) == dict(read_raw_dir(raw).files) and not snap.refused


# ---- sizes ------------------------------------------------------------------------------------------


def sparse(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.truncate(size)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_2_gib_sparse_file_is_refused_without_reading_it(raw: Path) -> None:
    """The review's ``truncate -s 2G 1_raw/notes.txt`` made the service use 4.2 GB: now its size
    is checked before any read."""
    sparse(raw / "notes.txt", 2 * 1024**3)
    peak = peak_rss_mib()
    started = time.monotonic()

    snap = read_raw_dir(raw)

    assert time.monotonic() - started < 1.0
    assert peak_rss_mib() - peak < 64
    assert "notes.txt" not in snap.files
    message = errors_of(snap)["1_raw/notes.txt"].message
    assert f"{2 * 1024**3:,} bytes" in message and "16 MiB" in message and "for one file" in message
    assert dict(snap.files) == dict(read_raw_dir(EXAMPLE_RAW).files)  # the rest is read


def test_the_file_limit_is_inclusive(raw: Path) -> None:
    sparse(raw / "at-limit.bin", MAX_FILE_BYTES)
    sparse(raw / "over-limit.bin", MAX_FILE_BYTES + 1)
    snap = read_raw_dir(raw)
    assert len(snap.files["at-limit.bin"]) == MAX_FILE_BYTES
    assert "over-limit.bin" not in snap.files and "limit" in dict(snap.refused)["over-limit.bin"]


def test_the_total_limit_refuses_what_would_pass_it(tmp_path: Path) -> None:
    """Files are read in name order until the next would bring the total over the limit; that one
    (and any later one over it) is refused naming the total and the limit; smaller later ones fit."""
    raw = tmp_path / "1_raw"
    raw.mkdir()
    for name, size in [("a.csv", 400), ("b.csv", 400), ("c.csv", 400), ("d.csv", 100)]:
        (raw / name).write_bytes(b"x" * size)

    snap = read_with(raw, max_total_bytes=1000)

    assert sorted(snap.files) == ["a.csv", "b.csv", "d.csv"]
    message = dict(snap.refused)["c.csv"]
    assert "1,200 bytes" in message and "for all of 1_raw/" in message
    assert MAX_TOTAL_BYTES == 256 * 1024 * 1024  # the real limit, documented in the module


def test_a_folder_nested_past_the_depth_limit_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "1_raw"
    deep = raw.joinpath(*["d"] * (MAX_DEPTH + 3))
    deep.mkdir(parents=True)
    (deep / "x.txt").write_text("deep\n")
    snap = read_raw_dir(raw)
    assert not snap.files
    [(path, reason)] = snap.refused
    assert path.count("/") == MAX_DEPTH - 1 and f"more than {MAX_DEPTH} folders deep" in reason


@needs_openat2
def test_links_that_multiply_folders_stop_at_the_entry_limit(tmp_path: Path) -> None:
    """No loop, but 2**20 paths: level i holds two links to level i+1. The walk stops and says so."""
    raw = tmp_path / "1_raw"
    for level in range(20):
        (raw / f"l{level}").mkdir(parents=True)
        for link in ("x", "y"):
            (raw / f"l{level}" / link).symlink_to(f"../l{level + 1}", target_is_directory=True)
    (raw / "l20").mkdir()
    (raw / "l20" / "f.txt").write_text("f\n")

    started = time.monotonic()
    snap = read_raw_dir(raw)

    assert time.monotonic() - started < 30
    assert any(f"more than {MAX_ENTRIES:,} files and folders" in reason for _, reason in snap.refused)


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
