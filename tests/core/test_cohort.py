"""The cohort: combos, content-addressed gen_ids, membership and manifest, and their files."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daydreamd.core import ids
from daydreamd.core.build import Build, build_from_raw
from daydreamd.core.cohort import MEMBERSHIP_COLUMNS, Cohort
from daydreamd.core.config import Settings, load_settings
from daydreamd.core.errors import CohortError
from daydreamd.core.snapshot import RawFiles, read_raw_dir
from daydreamd.core.stages import Stage
from daydreamd.storage.cohort_files import read_combo_mappings, record_combos, write_cohort

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "data" / "1_raw"
CORPUS = ROOT.parent / "shared" / "corpus" / "upstream-daydreaming" / "1_raw"


def example_files() -> dict[str, bytes]:
    return dict(read_raw_dir(EXAMPLE).files)


def build(files: dict[str, bytes], settings: Settings | None = None) -> Cohort:
    result: Build = build_from_raw(RawFiles.of(files), settings or Settings())
    assert result.cohort is not None, [str(p) for p in result.problems]
    return result.cohort


def ids_by_stage(cohort: Cohort) -> dict[Stage, set[str]]:
    out: dict[Stage, set[str]] = {s: set() for s in Stage}
    for g in cohort.generations:
        out[g.stage].add(g.gen_id)
    return out


def edit(files: dict[str, bytes], path: str, change: Callable[[str], str]) -> dict[str, bytes]:
    return {**files, path: change(files[path].decode()).encode()}


def shuffle_rows(text: str, seed: int) -> str:
    header, *rows = text.strip("\n").split("\n")
    random.Random(seed).shuffle(rows)
    return "\n".join([header, *rows]) + "\n"


class TestExampleCohort:
    """The shipped example builds the cohort its files describe."""

    def test_counts_follow_the_cross_product(self) -> None:
        """3 active concepts at k=2 give 3 combos; x3 draft templates x1 model; x2 essays; x2 judges."""
        cohort = build(example_files())
        assert len(cohort.combos) == 3
        assert cohort.counts() == {"draft": 9, "essay": 18, "evaluation": 36}

    def test_parents_precede_children_and_essays_inherit_the_draft_model(self) -> None:
        """Every essay points at a draft listed before it and carries that draft's model and combo."""
        cohort = build(example_files())
        seen = {}
        for g in cohort.generations:
            if g.stage is Stage.ESSAY:
                parent = seen[g.parent_gen_id]
                assert parent.stage is Stage.DRAFT
                assert (g.llm_model_id, g.combo_id) == (parent.llm_model_id, parent.combo_id)
            seen[g.gen_id] = g

    def test_gen_ids_carry_their_stage_prefix(self) -> None:
        """An id alone says its stage: d_, e_ or v_ plus 16 hex digits."""
        prefixes = {Stage.DRAFT: "d_", Stage.ESSAY: "e_", Stage.EVALUATION: "v_"}
        for g in build(example_files()).generations:
            assert g.gen_id.startswith(prefixes[g.stage])
            assert len(g.gen_id) == 18
            int(g.gen_id[2:], 16)

    def test_replicates_multiply_each_stage(self) -> None:
        """replication_config.csv multiplies drafts, and children of every replicate."""
        files = {**example_files(), "replication_config.csv": b"stage,replicates\ndraft,2\nevaluation,3\n"}
        counts = build(files).counts()
        assert counts == {"draft": 18, "essay": 36, "evaluation": 36 * 2 * 3}

    def test_k_is_capped_at_the_number_of_active_concepts(self) -> None:
        """k_max larger than the active concepts gives one combo of all of them."""
        settings = Settings(experiment=dataclasses.replace(Settings().experiment, k_max=9))
        cohort = build(example_files(), settings)
        assert len(cohort.combos) == 1
        assert len(cohort.combos[0].concept_ids) == 3
        assert cohort.manifest["k"] == 3


@pytest.mark.skipif(not CORPUS.is_dir(), reason="upstream corpus not present")
def test_upstream_corpus_cohort_size() -> None:
    """The researchers' corpus, unchanged, at k_max=2: 525 drafts, 525 essays, 2,100 evaluations."""
    cohort = build(dict(read_raw_dir(CORPUS).files))
    assert cohort.counts() == {"draft": 525, "essay": 525, "evaluation": 2100}


class TestIdContract:
    """Golden values pin the id formulas: a change here changes every id users have."""

    def test_combo_id_golden(self) -> None:
        """combo_id for a fixed input never changes."""
        assert (
            ids.combo_id(["b", "a"], "paragraph", 2)
            == "combo_v1_" + ids.sha256_hex("combo|v1|paragraph|2|a|b")[:12]
        )
        assert ids.combo_id(["b", "a"], "paragraph", 2) == "combo_v1_c1ee6c6446c8"

    def test_gen_id_golden(self) -> None:
        """gen_id for a fixed spec, parent and replicate never changes."""
        spec = ids.gen_spec(stage=Stage.ESSAY, template_id="t", template_sha256="0" * 64, generator="copy")
        assert ids.gen_id(Stage.ESSAY, spec, "d_0123456789abcdef", 1) == "e_d66fc4fe06d65856"

    def test_copy_spec_ignores_model_and_params(self) -> None:
        """Copy templates call no model, so the model cannot be part of their identity."""
        a = ids.gen_spec(
            stage=Stage.ESSAY, template_id="t", template_sha256="x", generator="copy", model="m1"
        )
        b = ids.gen_spec(
            stage=Stage.ESSAY, template_id="t", template_sha256="x", generator="copy", model="m2"
        )
        assert a == b


@given(st.permutations(["alpha", "beta", "gamma", "delta"]), st.sampled_from(["sentence", "paragraph"]))
def test_combo_id_ignores_concept_order(order: list[str], level: str) -> None:
    """The same concepts in any order are the same combo."""
    assert ids.combo_id(order, level, 4) == ids.combo_id(sorted(order), level, 4)


@given(
    st.sampled_from(["template_id", "template_sha256", "generator", "llm_model_id", "model", "params"]),
    st.text(min_size=1, max_size=8),
)
def test_gen_id_changes_with_every_input(field: str, value: str) -> None:
    """Any change to what determines a generation's input gives a new id."""
    base = {
        "stage": Stage.DRAFT,
        "template_id": "t",
        "template_sha256": "s",
        "generator": "llm",
        "llm_model_id": "m",
        "model": "vendor/m",
        "params": {"max_tokens": 10, "temperature": 0.5},
    }
    changed = {**base, field: {"max_tokens": value} if field == "params" else base[field] + value}  # type: ignore[operator]
    assert ids.gen_id(Stage.DRAFT, ids.gen_spec(**base), "p", 1) != ids.gen_id(  # type: ignore[arg-type]
        Stage.DRAFT,
        ids.gen_spec(**changed),
        "p",
        1,  # type: ignore[arg-type]
    )
    assert ids.gen_id(Stage.DRAFT, ids.gen_spec(**base), "p", 1) != ids.gen_id(  # type: ignore[arg-type]
        Stage.DRAFT,
        ids.gen_spec(**base),
        "p",
        2,  # type: ignore[arg-type]
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_ids_ignore_row_order_of_templates_and_models(seed: int) -> None:
    """Reordering template and model rows changes no gen_id and not the cohort id."""
    files = example_files()
    reordered = dict(files)
    for path in ("draft_templates.csv", "essay_templates.csv", "evaluation_templates.csv", "llm_models.csv"):
        reordered = edit(reordered, path, lambda text: shuffle_rows(text, seed))
    a, b = build(files), build(reordered)
    assert {g.gen_id for g in a.generations} == {g.gen_id for g in b.generations}
    assert a.cohort_id == b.cohort_id


def test_building_twice_gives_the_same_cohort() -> None:
    """Determinism: the same files give the same ids in the same order and the same manifest."""
    a, b = build(example_files()), build(example_files())
    assert a.generations == b.generations
    assert a.manifest == b.manifest


class TestTemplateEdits:
    """Editing one template changes exactly the ids of its generations and their descendants."""

    @pytest.mark.parametrize(
        ("path", "stage", "template_id"),
        [
            ("templates/draft/contrast-map.txt", Stage.DRAFT, "contrast-map"),
            ("templates/essay/polished-essay.txt", Stage.ESSAY, "polished-essay"),
            ("templates/evaluation/rigor-judge.txt", Stage.EVALUATION, "rigor-judge"),
        ],
    )
    def test_only_the_edited_template_and_descendants_change(
        self, path: str, stage: Stage, template_id: str
    ) -> None:
        """Ids outside the edited template's subtree are untouched; ids inside all change."""
        before = build(example_files())
        after = build(edit(example_files(), path, lambda text: text + "\nOne more instruction.\n"))
        affected = {g.gen_id for g in before.generations if g.stage is stage and g.template_id == template_id}
        for g in before.generations:  # close the set over descendants (parents come first)
            if g.parent_gen_id in affected:
                affected.add(g.gen_id)
        old_ids = {g.gen_id for g in before.generations}
        new_ids = {g.gen_id for g in after.generations}
        assert affected, "the edited template has generations"
        assert old_ids - new_ids == affected
        assert len(new_ids - old_ids) == len(affected)
        assert before.cohort_id != after.cohort_id

    def test_editing_a_description_changes_the_drafts_that_use_it(self) -> None:
        """A concept's text is draft input: only combos containing that concept get new ids."""
        before = build(example_files())
        after = build(
            edit(example_files(), "concepts/descriptions-paragraph/exaptation.txt", lambda t: t + " More.")
        )
        after_ids = ids_by_stage(after)[Stage.DRAFT]
        changed_drafts = {
            g.combo_id for g in before.generations if g.stage is Stage.DRAFT and g.gen_id not in after_ids
        }
        with_exaptation = {c.combo_id for c in before.combos if "exaptation" in c.concept_ids}
        assert changed_drafts == with_exaptation

    def test_editing_an_inactive_template_changes_nothing(self) -> None:
        """Inactive rows are not part of the cohort, so their files do not matter."""
        files = example_files()
        edited = {**files, "templates/draft/old-brainstorm.txt": b"anything {{ concepts }}"}
        assert build(files).generations == build(edited).generations


class TestCohortOverride:
    """An explicit cohort id replaces the content hash; the hash stays in the manifest."""

    @pytest.mark.parametrize(
        ("value", "expected"), [("my-run", "my-run"), ("0", None), ("null", None), ("", None)]
    )
    def test_dd_cohort(self, value: str, expected: str | None) -> None:
        """DD_COHORT sets the id; empty/0/false/none/null mean unset."""
        settings = load_settings(None, {"DD_COHORT": value})
        cohort = build(example_files(), settings)
        content_id = build(example_files()).cohort_id
        assert cohort.cohort_id == (expected or content_id)
        assert cohort.manifest["content_id"] == content_id


class TestCohortFiles:
    """manifest.json, membership.csv and combo_mappings.csv on disk."""

    def test_rebuild_is_byte_identical(self, tmp_path: Path) -> None:
        """Writing the same cohort twice gives identical bytes, and the mappings grow only once."""
        cohort = build(example_files())
        first = write_cohort(tmp_path, cohort)
        manifest, membership = first.manifest.read_bytes(), first.membership.read_bytes()
        mappings = (tmp_path / "combo_mappings.csv").read_bytes()
        second = write_cohort(tmp_path, build(example_files()))
        assert second.manifest.read_bytes() == manifest
        assert second.membership.read_bytes() == membership
        assert (tmp_path / "combo_mappings.csv").read_bytes() == mappings
        assert (first.new_combos, second.new_combos) == (3, 0)

    def test_membership_columns_and_rows(self, tmp_path: Path) -> None:
        """membership.csv has the contract's columns and one row per generation with the cohort id."""
        cohort = build(example_files())
        lines = write_cohort(tmp_path, cohort).membership.read_text().splitlines()
        assert tuple(lines[0].split(",")) == MEMBERSHIP_COLUMNS
        assert len(lines) == 1 + len(cohort.generations)
        first = dict(zip(MEMBERSHIP_COLUMNS, lines[1].split(","), strict=True))
        assert (
            first["stage"] == "draft"
            and first["parent_gen_id"] == ""
            and first["cohort_id"] == cohort.cohort_id
        )
        assert first["replicate"] == "1"

    def test_no_temp_files_are_left_behind(self, tmp_path: Path) -> None:
        """Atomic writes clean up after themselves."""
        write_cohort(tmp_path, build(example_files()))
        assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]

    def test_combo_collision_is_refused(self, tmp_path: Path) -> None:
        """A recorded combo id that now names other concepts is an error, and nothing is overwritten."""
        cohort = build(example_files())
        path = tmp_path / "combo_mappings.csv"
        record_combos(path, cohort.combos)
        forged = dataclasses.replace(cohort.combos[0], concept_ids=("someone", "else"))
        before = path.read_bytes()
        with pytest.raises(CohortError, match="collision"):
            record_combos(path, [forged])
        assert path.read_bytes() == before

    def test_mappings_record_each_combo_once(self, tmp_path: Path) -> None:
        """Each combo appears once with all its concepts, whatever the number of rebuilds."""
        cohort = build(example_files())
        path = tmp_path / "combo_mappings.csv"
        record_combos(path, cohort.combos)
        record_combos(path, cohort.combos)
        recorded = read_combo_mappings(path)
        assert set(recorded) == {c.combo_id for c in cohort.combos}
        assert len(path.read_text().splitlines()) == 1 + 2 * len(cohort.combos)
