"""Re-parse for free: a finished run whose parsing changes is parsed again from its saved replies.

Against the real daemon and the fake LLM server: a changed verdict label, a changed draft parser
and a parser version older than the running one each re-parse what they affect, with no request
to the server, the new values in the run state and the results, the old ones in each
generation's history, a ``reparsed`` event, and the children of changed drafts flagged.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio.to_thread

from tests.fakellm import FakeLlm, RecordedRequest, default_reply
from tests.integration.daemon import Daemon, ctl, fast_config
from tests.integration.test_operations import watching


def two_verdicts(request: RecordedRequest) -> str:
    """The fake's usual reply plus a second labelled line, ``VERDICT: 9 - SCORE``."""
    text = default_reply(request)
    score = int(text.rsplit("SCORE: ", 1)[1])
    return text + f"VERDICT: {9 - score}\n"


async def evaluations(daemon: Daemon) -> dict[str, dict[str, Any]]:
    rows = await daemon.get("/v1/generations", stage="evaluation", limit=1000)
    return {row["gen_id"]: row for row in rows["generations"]}


async def finished_run(daemons: list[Daemon], root: Path, fake: FakeLlm) -> Daemon:
    daemon = Daemon(root, fast_config(fake.base_url))
    daemons.append(daemon)
    await daemon.start()
    for stage in ("draft", "essay", "evaluation"):
        await daemon.approve(stage)
    await daemon.wait_stage("evaluation", done=36)
    return daemon


def reparse_logs(daemon: Daemon) -> list[dict[str, Any]]:
    """The ``reparsed`` summaries in the daemon's log (one per pass, written when the pass ends)."""
    found = []
    for line in daemon.log_tail(2000).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "reparsed":
            found.append(record)
    return found


def rewrite_csv(path: Path, column: str, values: dict[str, str]) -> None:
    """Set ``column`` (added when missing) per template id; other rows keep an empty cell."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    if column not in header:
        header.append(column)
        lines = [",".join(header)] + [line + "," for line in lines[1:]]
    at = header.index(column)
    out = [lines[0]]
    for line in lines[1:]:
        cells = line.split(",")
        if cells[0] in values:
            cells[at] = values[cells[0]]
        out.append(",".join(cells))
    path.write_text("\n".join(out) + "\n")


async def test_a_changed_label_and_parser_reparse_without_a_call(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    async with FakeLlm(reply_builder=two_verdicts) as fake:
        daemon = await finished_run(daemons, tmp_path, fake)
        before = await evaluations(daemon)
        paid = fake.request_count
        novelty = {g: r for g, r in before.items() if r["template_id"] == "novelty-judge"}
        assert len(novelty) == 18 and all(r["parse_key"].endswith("/SCORE/0-10") for r in novelty.values())

        async with watching(daemon, "--json") as reader:
            assert (await reader.until_event(lambda e: True))["event"] == "subscribed"
            rewrite_csv(
                daemon.raw / "evaluation_templates.csv", "verdict_label", {"novelty-judge": "VERDICT"}
            )
            event = await reader.until_event(lambda e: e["event"] == "reparsed")
        assert (event["templates"], event["checked"], event["changed"], event["now_failed"]) == (1, 18, 18, 0)

        after = await evaluations(daemon)
        assert fake.request_count == paid, "re-parsing paid for a call"
        for gen_id, row in before.items():
            flipped = row["template_id"] == "novelty-judge"
            assert after[gen_id]["score"] == (9 - row["score"] if flipped else row["score"]), gen_id
            assert after[gen_id]["state"] == "done"

        gen_id = next(iter(novelty))
        shown = await anyio.to_thread.run_sync(lambda: ctl(daemon, "show", gen_id, "--json"))
        detail = json.loads(shown.stdout)
        assert detail["parse"]["key"].endswith("/VERDICT/0-10")
        assert detail["parse"]["verdict"]["text"].startswith("VERDICT:")
        (change,) = detail["parse_history"]
        assert (change["old_parsed"], change["new_score"]) == (
            f"{before[gen_id]['score']:.1f}",
            9 - before[gen_id]["score"],
        )
        text = await anyio.to_thread.run_sync(lambda: ctl(daemon, "show", gen_id))
        assert "score from line" in text.stdout and "re-parsed" in text.stdout
        metadata = json.loads((daemon.data / "gens" / "evaluation" / gen_id / "metadata.json").read_text())
        assert metadata["parse_history"][0]["parsed"] == f"{before[gen_id]['score']:.1f}"
        assert (
            daemon.data / "gens" / "evaluation" / gen_id / "parsed.txt"
        ).read_text() == f"{9 - before[gen_id]['score']:.1f}"

        out = tmp_path / "results"
        done = await anyio.to_thread.run_sync(lambda: ctl(daemon, "results", "--out", str(out)))
        assert done.returncode == 0, done.stderr
        scores = (out / "parsing" / "aggregated_scores.csv").read_text()
        assert (
            f"{gen_id}," in scores
            and f",{9 - before[gen_id]['score']:g}," in scores.split(gen_id, 1)[1].split("\n", 1)[0] + ","
        )

        # A draft parser change: the drafts' texts change, their essays are flagged, nothing re-runs.
        essays_done = (await daemon.status())["stages"]["essay"]["done"]
        async with watching(daemon, "--json") as reader:
            assert (await reader.until_event(lambda e: True))["event"] == "subscribed"
            rewrite_csv(daemon.raw / "draft_templates.csv", "parser", {"rolling-idea": "identity"})
            event = await reader.until_event(lambda e: e["event"] == "reparsed")
        assert event["checked"] == 3 and event["changed"] == 3
        status = await daemon.wait_for(lambda s: bool(s and s.get("parent_changed")), what="flagged essays")
        assert status["parent_changed"] == {"essay": 6}
        assert status["stages"]["essay"]["done"] == essays_done
        assert fake.request_count == paid
        plain = await anyio.to_thread.run_sync(lambda: ctl(daemon, "status", "--plain"))
        assert "6 finished essay generation(s) were made from a parent" in plain.stdout


async def test_an_older_parser_version_is_reparsed_at_startup(tmp_path: Path, daemons: list[Daemon]) -> None:
    """A run state written under parser version 1 (other values) is re-parsed by the running version."""
    async with FakeLlm(reply_builder=two_verdicts) as fake:
        daemon = await finished_run(daemons, tmp_path, fake)
        before = await evaluations(daemon)
        paid = fake.request_count
        assert await daemon.stop() == 0

        db = sqlite3.connect(daemon.root / "state" / "dd.sqlite")
        with db:
            db.execute(
                "UPDATE generations SET parse_key = replace(parse_key, '@2/', '@1/'), score = score + 0.5 "
                "WHERE stage = 'evaluation'"
            )
            db.execute("UPDATE template_parse_keys SET parse_key = replace(parse_key, '@2/', '@1/')")
            assert db.execute(
                "SELECT count(*) FROM template_parse_keys WHERE parse_key LIKE '%@1/%'"
            ).fetchone() == (2,)
        db.close()
        for gen_id, row in before.items():
            (daemon.data / "gens" / "evaluation" / gen_id / "parsed.txt").write_text(
                f"{row['score'] + 0.5:.1f}"
            )

        await daemon.start()
        await daemon.wait_for(lambda s: bool(reparse_logs(daemon)), what="the re-parse", deadline_s=30)
        after = await evaluations(daemon)
        assert fake.request_count == paid, "re-parsing paid for a call"
        assert {g: r["score"] for g, r in after.items()} == {g: r["score"] for g, r in before.items()}
        assert all(
            r["parse_key"].endswith("@2/SCORE/0-10") or "@2/" in r["parse_key"] for r in after.values()
        )
        gen_id = next(iter(before))
        detail = await daemon.get(f"/v1/generations/{gen_id}")
        (change,) = detail["parse_history"]
        assert change["old_key"].count("@1/") == 1 and change["old_score"] == before[gen_id]["score"] + 0.5
        assert change["old_parsed"] == f"{before[gen_id]['score'] + 0.5:.1f}"
        (logged,) = reparse_logs(daemon)
        assert (logged["checked"], logged["changed"], logged["reason"]) == (36, 36, "parse key changed")
        assert await daemon.stop() == 0
        out = tmp_path / "results"
        done = await anyio.to_thread.run_sync(lambda: ctl(daemon, "results", "--out", str(out)))
        assert done.returncode == 0, done.stderr
        with (out / "parsing" / "aggregated_scores.csv").open(newline="") as handle:
            table = {row["gen_id"]: float(row["score"]) for row in csv.DictReader(handle)}
        assert table == {g: r["score"] for g, r in before.items()}
