"""The scheduler's lanes: ready work per (mode, model), chosen round-robin within limits.

In memory and synchronous: no mocks, no clock.
"""

from __future__ import annotations

from collections import Counter

from daydreamd.core.cohort import Generation
from daydreamd.core.stages import Stage
from daydreamd.daemon.scheduler import Lanes
from daydreamd.storage.ready import Key, Ready


def ready(n: int, model: str, *, stage: Stage = Stage.DRAFT, approval: int | None = None) -> Ready:
    rank = list(Stage).index(stage)
    generation = Generation(stage, f"g{n:04d}", "", "c", "t", model, 1)
    return Ready(generation=generation, mode="llm", approval_id=approval, order=(rank, n))


def lanes_of(rows_by_model: dict[str, list[Ready]], batch: int = 100) -> Lanes:
    lanes = Lanes(batch=batch)
    for model, rows in rows_by_model.items():
        lanes.fill(("llm", model), rows, asked=batch)
    return lanes


def test_a_model_that_may_not_start_never_holds_back_the_others() -> None:
    """Model a's window is full: b and c take every free slot, a none, and a's work stays held."""
    lanes = lanes_of(
        {
            "a": [ready(i, "a") for i in range(10)],
            "b": [ready(100 + i, "b") for i in range(10)],
            "c": [ready(200 + i, "c") for i in range(10)],
        }
    )
    keys: list[Key] = [("llm", "a"), ("llm", "b"), ("llm", "c")]
    chosen = lanes.choose(8, keys, may_start=lambda key: key != ("llm", "a"))
    by_model = Counter(r.generation.llm_model_id for r in chosen)
    assert by_model == {"b": 4, "c": 4}
    assert lanes.held(("llm", "a")) == 10


def test_round_robin_shares_slots_and_limits_are_taken_as_chosen() -> None:
    """Three models with work and 7 slots: each gets 2 or 3; a per-model cap taken through
    ``take`` stops that model at once; over many calls nobody is always served first."""
    lanes = lanes_of({m: [ready(i + 100 * k, m) for i in range(50)] for k, m in enumerate("abc")})
    keys: list[Key] = [("llm", m) for m in "abc"]
    taken: Counter[str] = Counter()

    def may_start(key: Key) -> bool:
        return key[1] != "a" or taken["a"] < 1

    def take(r: Ready) -> None:
        taken[r.generation.llm_model_id] += 1

    chosen = lanes.choose(7, keys, may_start=may_start, take=take)
    assert len(chosen) == 7
    assert taken["a"] == 1 and taken["b"] + taken["c"] == 6 and abs(taken["b"] - taken["c"]) <= 1
    firsts = Counter(
        lanes.choose(1, keys, may_start=lambda _: True)[0].generation.llm_model_id for _ in range(30)
    )
    assert set(firsts) == {"a", "b", "c"} and min(firsts.values()) >= 9


def test_parents_stages_first_within_a_lane_and_children_join_in_order() -> None:
    lanes = lanes_of({"a": [ready(5, "a"), ready(9, "a")]})
    assert lanes.add([ready(1, "a", stage=Stage.ESSAY), ready(3, "a")]) == 2
    assert lanes.add([ready(3, "a")]) == 0  # already held
    assert lanes.add([ready(7, "b")]) == 0  # lane b was never read: its first read brings it
    order = [r.gen_id for r in lanes.choose(10, [("llm", "a")], may_start=lambda _: True)]
    assert order == ["g0003", "g0005", "g0009", "g0001"]
    assert len(lanes) == 0


def test_a_spent_budget_skips_its_work_without_blocking_other_approvals() -> None:
    lanes = lanes_of({"a": [ready(i, "a", approval=1) for i in range(5)] + [ready(50, "a", approval=2)]})
    chosen = lanes.choose(3, [("llm", "a")], may_start=lambda _: True, allowed=lambda r: r.approval_id != 1)
    assert [r.gen_id for r in chosen] == ["g0050"]
    assert lanes.held(("llm", "a")) == 5


def test_reads_are_needed_only_when_a_lane_may_be_missing_work() -> None:
    lanes = Lanes(batch=10)
    key: Key = ("llm", "a")
    assert lanes.needs_read(key) and not lanes.known(key)
    lanes.fill(key, [ready(i, "a") for i in range(3)], asked=10)  # short: that is all there is
    assert lanes.known(key) and not lanes.needs_read(key)
    lanes.fill(key, [ready(i, "a") for i in range(10)], asked=10, busy={"g0000"})  # full: maybe more
    assert lanes.held(key) == 9 and "g0000" not in lanes
    lanes.choose(5, [key], may_start=lambda _: True)
    assert lanes.needs_read(key)  # 4 left, under half a batch, and the database may hold more
    lanes.forget()
    assert len(lanes) == 0 and lanes.needs_read(key)
