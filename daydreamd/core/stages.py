"""The three stages of an experiment and what each one is given (pure).

A generation's stage fixes its parent's stage, the variables its template may use, and the
prefix of its gen_id. Keeping these facts in one table keeps the loader, the cohort builder and
the renderer in agreement.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """A phase of the experiment, in the order generations flow through them."""

    DRAFT = "draft"
    ESSAY = "essay"
    EVALUATION = "evaluation"


STAGES: tuple[Stage, ...] = (Stage.DRAFT, Stage.ESSAY, Stage.EVALUATION)


class State(StrEnum):
    """Where a generation is in the run state, in the order work moves through them.

    ``retired`` is not a step: it marks generations no longer in the cohort (whatever their
    state), and is counted and filtered on as if it were one.
    """

    PENDING = "pending"
    """In the cohort, not approved."""
    QUEUED = "queued"
    """Approved, waiting for its parent or a slot."""
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    RETIRED = "retired"


LIVE_STATES: tuple[State, ...] = (State.PENDING, State.QUEUED, State.RUNNING, State.DONE, State.FAILED)
"""The states of generations in the cohort (the ``state`` column; every one but ``retired``)."""

PARENT_STAGE: dict[Stage, Stage | None] = {
    Stage.DRAFT: None,
    Stage.ESSAY: Stage.DRAFT,
    Stage.EVALUATION: Stage.ESSAY,
}

GEN_ID_PREFIX: dict[Stage, str] = {Stage.DRAFT: "d_", Stage.ESSAY: "e_", Stage.EVALUATION: "v_"}
"""gen_ids start with their stage's prefix, so an id alone says what it is."""

TEMPLATE_VARIABLES: dict[Stage, frozenset[str]] = {
    Stage.DRAFT: frozenset({"concepts"}),
    Stage.ESSAY: frozenset({"draft_block", "links_block"}),
    Stage.EVALUATION: frozenset({"response"}),
}
"""The top-level variables a stage's templates are rendered with."""

CONCEPT_ATTRIBUTES: frozenset[str] = frozenset({"name", "content"})
"""What each item of a draft template's ``concepts`` list offers."""


def parse_stage(text: str) -> Stage | None:
    """The stage named by ``text`` (case and surrounding space ignored), or None."""
    try:
        return Stage(text.strip().lower())
    except ValueError:
        return None
