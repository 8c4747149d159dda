"""The cohort-spec compiler on in-memory documents: each rule, each error, includes, catalog (pure)."""

from __future__ import annotations

import random
from itertools import product
from typing import Any

import pytest

from daydreamd.core.problems import Level, Problem
from daydreamd.core.spec.catalog import Catalog
from daydreamd.core.spec.compile import Compiled, compile_spec
from daydreamd.core.spec.document import SpecDocument, include_refs, include_target

SPEC = "cohorts/c/spec/config.yaml"


def doc(data: Any, files: dict[str, str] | None = None, lines: dict[Any, int] | None = None) -> SpecDocument:
    return SpecDocument(
        path=SPEC,
        data=data,
        lines=lines or {},
        files={k: v.encode() for k, v in (files or {}).items()},
    )


def ok(data: Any, files: dict[str, str] | None = None, catalog: Catalog | None = None) -> Compiled:
    compiled, problems = compile_spec(doc(data, files), catalog)
    assert compiled is not None, [str(p) for p in problems]
    return compiled


def errors(data: Any, files: dict[str, str] | None = None, catalog: Catalog | None = None) -> list[str]:
    compiled, problems = compile_spec(doc(data, files), catalog)
    assert compiled is None
    return [str(p) for p in problems if p.level is Level.ERROR]


def rows(compiled: Compiled) -> list[dict[str, Any]]:
    return list(compiled.dicts())


# --- axes and the cross product ---------------------------------------------------------------


def test_axes_cross_product_last_axis_fastest_levels_deduplicated() -> None:
    compiled = ok({"axes": {"a": ["x", "y", "x"], "b": [1, 2]}})
    assert compiled.columns == ("a", "b")
    assert list(compiled.rows()) == [("x", "1"), ("x", "2"), ("y", "1"), ("y", "2")]


def test_an_empty_axis_is_a_warning_and_no_rows() -> None:
    compiled, problems = compile_spec(doc({"axes": {"a": [], "b": ["x"]}}))
    assert compiled is not None and compiled.count == 0 and list(compiled.rows()) == []
    assert [p.level for p in problems] == [Level.WARNING, Level.WARNING, Level.WARNING]  # + 2 unknown columns
    assert "no levels" in str(problems[0])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("axes: x", "a spec must be a mapping"),
        ({"axes": ["a"]}, "axes: axes must be a mapping"),
        (
            {"axes": {"a": "creative"}},
            "axes.a: levels must be a list or an '@file:...' include, not the text",
        ),
        ({"axes": {"a": [True]}}, "axes.a[0]: a level must be an id (text or an integer), not bool True"),
        ({"axes": {"a": [1.5]}}, "not float 1.5"),
        ({"axes": {"a": ["x"]}, "replicates": {}}, "declare replicate axes as axes"),
        ({"axes": {"a": ["x"]}, "rules": [{"subset": {}}]}, "rules: rules must be a mapping with sections"),
        ({"axes": {"a": ["x"]}, "rules": {"filters": {}}}, "unknown rule section 'filters'"),
        (
            {"axes": {"a": ["x"]}, "output": {"field_order": ["b"]}},
            "output.field_order[0]: 'b' is not an axis",
        ),
        ({"axes": {"a": ["x"]}, "output": {"seed": "x"}}, "output.seed: seed must be an integer"),
        ({"axes": {"a": ["x"]}, "output": {"shuffle": 1}}, "output.shuffle: unknown key 'shuffle'"),
        ({"axes": {"a": None}}, "axes.a: axis 'a' is null, but no tuple rule gives its levels"),
    ],
)
def test_structure_errors_name_the_key_and_the_value(data: Any, expected: str) -> None:
    found = errors(data)
    assert any(expected in line and line.startswith(SPEC) for line in found), found


def test_problems_carry_the_line_of_the_key_when_the_edge_knows_it() -> None:
    compiled, problems = compile_spec(
        doc({"axes": {"a": ["x", True]}}, lines={("axes",): 1, ("axes", "a"): 2, ("axes", "a", 1): 4})
    )
    assert compiled is None
    assert str(problems[0]).startswith(f"{SPEC}:4: error: axes.a[1]: ")


def test_all_structure_errors_are_listed_at_once() -> None:
    found = errors({"axes": {"a": "x", "b": [None]}, "output": {"seed": 1.5}, "extra": 1})
    assert len(found) == 4


# --- subsets ----------------------------------------------------------------------------------


def test_subset_keeps_listed_levels_in_the_axis_order() -> None:
    compiled = ok({"axes": {"a": ["x", "y", "z"]}, "rules": {"subsets": {"a": ["z", "x", "w"]}}})
    assert [r["a"] for r in rows(compiled)] == ["x", "z"]


def test_subset_errors() -> None:
    assert (
        "keeps none of axis 'a''s levels"
        in errors({"axes": {"a": ["x"]}, "rules": {"subsets": {"a": ["y"]}}})[0]
    )
    assert (
        "rules.subsets.b: no axis 'b'"
        in errors({"axes": {"a": ["x"]}, "rules": {"subsets": {"b": ["x"]}}})[0]
    )
    assert (
        "the subset of 'a' must be a list"
        in errors({"axes": {"a": ["x"]}, "rules": {"subsets": {"a": "x"}}})[0]
    )


# --- ties -------------------------------------------------------------------------------------


def test_tie_moves_axes_together_on_shared_levels_and_restores_their_columns() -> None:
    compiled = ok(
        {
            "axes": {"draft_template": ["a", "b", "c"], "model": ["m1", "m2"], "essay_template": ["c", "a"]},
            "rules": {"ties": {"same_template": {"axes": ["draft_template", "essay_template"]}}},
        }
    )
    # the tie takes the first axis's place and order; its synthetic name is not a column
    assert compiled.columns == ("model", "draft_template", "essay_template")
    assert list(compiled.rows()) == [
        ("m1", "a", "a"),
        ("m2", "a", "a"),
        ("m1", "c", "c"),
        ("m2", "c", "c"),
    ]


def test_tie_named_after_one_of_its_axes_keeps_that_column() -> None:
    compiled = ok({"axes": {"a": ["x", "y"], "b": ["y"]}, "rules": {"ties": {"a": ["a", "b"]}}})
    assert rows(compiled) == [{"a": "y", "b": "y"}]


def test_tie_errors() -> None:
    assert (
        "share no level"
        in errors({"axes": {"a": ["x"], "b": ["y"]}, "rules": {"ties": {"t": ["a", "b"]}}})[0]
    )
    assert "names axis 'c'" in errors({"axes": {"a": ["x"]}, "rules": {"ties": {"t": ["a", "c"]}}})[0]
    assert (
        "unknown key 'to'"
        in errors({"axes": {"a": ["x"]}, "rules": {"ties": {"t": {"axes": ["a"], "to": "a"}}}})[0]
    )


def test_a_rule_naming_a_tied_axis_means_the_tie_and_both_columns_survive_a_later_pair() -> None:
    compiled = ok(
        {
            "axes": {"a": ["x", "y"], "b": ["x", "y"], "c": ["1", "2"]},
            "rules": {
                "ties": {"t": ["a", "b"]},
                "pairs": {"p": {"left": "b", "right": "c", "allowed": [["x", "1"], ["y", "2"]]}},
            },
        }
    )
    assert rows(compiled) == [{"b": "x", "c": "1", "a": "x"}, {"b": "y", "c": "2", "a": "y"}]


# --- pairs ------------------------------------------------------------------------------------


PAIRED = {
    "axes": {"draft_template": ["d1", "d2"], "x": ["k"], "essay_template": ["e1", "e2", "e3"]},
    "rules": {
        "pairs": {
            "p": {
                "left": "draft_template",
                "right": "essay_template",
                "allowed": [["d1", "e1"], ["d1", "e2"], ["d2", "e3"], ["d1", "e1"]],
            }
        }
    },
}


def test_pair_keeps_only_allowed_combinations_in_listed_order() -> None:
    compiled = ok(PAIRED)
    # the pair takes draft_template's place; its columns come after the untouched axes
    assert compiled.columns == ("x", "draft_template", "essay_template")
    assert list(compiled.rows()) == [("k", "d1", "e1"), ("k", "d1", "e2"), ("k", "d2", "e3")]


def test_pair_balance() -> None:
    def with_balance(balance: str) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "axes": PAIRED["axes"],
            "rules": {"pairs": {"p": dict(PAIRED["rules"]["pairs"]["p"])}},
        }
        spec["rules"]["pairs"]["p"]["balance"] = balance
        return spec

    assert ok(with_balance("right")).count == 3  # e1, e2, e3 once each
    found = errors(with_balance("left"))
    assert "pair 'p' is not balanced on the left" in found[0] and "d1=2, d2=1" in found[0]
    assert "not balanced on the left" in errors(with_balance("both"))[0]
    assert "balance must be left, right or both, not 'up'" in errors(with_balance("up"))[0]


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        (
            {"left": "draft_template", "right": "essay_template", "allowed": [["d1", "e9"]]},
            "right value 'e9' is not a level of 'essay_template'",
        ),
        (
            {"left": "draft_template", "right": "essay_template", "allowed": [["d1"]]},
            "a pair entry must be [left, right]",
        ),
        ({"left": "draft_template", "right": "essay_template", "allowed": []}, "allows nothing"),
        ({"left": "draft_template", "right": "essay_template"}, "needs allowed"),
        (
            {"left": "draft_template", "right": "draft_template", "allowed": [["d1", "d1"]]},
            "left and right must be different axes",
        ),
        ({"left": "draft_template", "right": "nope", "allowed": [["d1", "x"]]}, "names axis 'nope'"),
        (
            {
                "left": "draft_template",
                "right": "essay_template",
                "allowed": [["d1", "e1"]],
                "balanse": "left",
            },
            "unknown key 'balanse'",
        ),
    ],
)
def test_pair_errors(pair: dict[str, Any], expected: str) -> None:
    found = errors({"axes": PAIRED["axes"], "rules": {"pairs": {"p": pair}}})
    assert any(expected in line for line in found), found


# --- tuples and tuple-derived axes ------------------------------------------------------------


def test_tuple_derives_its_axes_and_expands_them() -> None:
    compiled = ok(
        {
            "axes": {"evaluation_template": ["v1", "v2"]},
            "rules": {
                "tuples": {
                    "bundle": {"axes": ["essay_template", "essay_llm"], "items": [["e1", "m1"], ["e2", "m1"]]}
                }
            },
        }
    )
    assert compiled.columns == ("evaluation_template", "essay_template", "essay_llm")
    assert list(compiled.rows()) == [
        ("v1", "e1", "m1"),
        ("v1", "e2", "m1"),
        ("v2", "e1", "m1"),
        ("v2", "e2", "m1"),
    ]


def test_a_null_axis_takes_its_place_and_its_levels_from_the_tuple() -> None:
    compiled = ok(
        {
            "axes": {"essay_template": None, "evaluation_template": ["v1"], "essay_llm": None},
            "rules": {"tuples": {"t": {"axes": ["essay_template", "essay_llm"], "items": [["e1", "m1"]]}}},
        }
    )
    assert rows(compiled) == [{"evaluation_template": "v1", "essay_template": "e1", "essay_llm": "m1"}]


def test_tuple_errors() -> None:
    base = {"axes": {"essay_template": ["e1"]}}
    items = [["e1", "m1"]]
    assert (
        "may not list levels too"
        in errors(
            {**base, "rules": {"tuples": {"t": {"axes": ["essay_template", "essay_llm"], "items": items}}}}
        )[0]
    )
    found = errors({"rules": {"tuples": {"t": {"axes": ["a", "b"], "items": [["x"]]}}}})
    assert "must have 2 value(s), one per axis a, b" in found[0]
    assert (
        "tuple.expand is no longer supported"
        in errors({"rules": {"tuples": {"t": {"axes": ["a"], "items": [["x"]], "expand": True}}}})[0]
    )
    assert "has no items" in errors({"rules": {"tuples": {"t": {"axes": ["a"], "items": []}}}})[0]
    # a subset written before the tuple narrows the derived axis: items outside it are errors
    assert (
        "value 'y' is not a level of 'a'"
        in errors(
            {"rules": {"subsets": {"a": ["x"]}, "tuples": {"t": {"axes": ["a"], "items": [["x"], ["y"]]}}}}
        )[0]
    )


def test_a_pair_may_bind_a_tuple_written_before_it() -> None:
    """As the original project's dual_llm spec does: right: essay_bundle (a tuple's name)."""
    compiled = ok(
        {
            "axes": {"draft_template": ["d1", "d2"], "r": ["1", "2"]},
            "rules": {
                "tuples": {
                    "bundle": {"axes": ["essay_template", "essay_llm"], "items": [["e1", "m"], ["e2", "m"]]}
                },
                "pairs": {
                    "p": {
                        "left": "draft_template",
                        "right": "bundle",
                        "allowed": [["d1", ["e2", "m"]], ["d2", ["e1", "m"]]],
                    }
                },
            },
        }
    )
    assert compiled.columns == ("r", "draft_template", "essay_template", "essay_llm")
    assert list(compiled.rows()) == [
        ("1", "d1", "e2", "m"),
        ("2", "d1", "e2", "m"),
        ("1", "d2", "e1", "m"),
        ("2", "d2", "e1", "m"),
    ]


def test_rules_run_in_the_order_written() -> None:
    """The same pair and tuple in the other order fail: the pair names a tuple not yet built."""
    found = errors(
        {
            "axes": {"draft_template": ["d1"]},
            "rules": {
                "pairs": {
                    "p": {"left": "draft_template", "right": "bundle", "allowed": [["d1", ["e1", "m"]]]}
                },
                "tuples": {"bundle": {"axes": ["essay_template", "essay_llm"], "items": [["e1", "m"]]}},
            },
        }
    )
    assert "names axis 'bundle', which is not an axis here" in found[0]


# --- output -----------------------------------------------------------------------------------


def test_field_order_puts_named_columns_first_the_rest_after() -> None:
    compiled = ok({"axes": {"a": ["x"], "b": ["y"], "c": ["z"]}, "output": {"field_order": ["c", "a"]}})
    assert compiled.columns == ("c", "a", "b")
    assert list(compiled.rows()) == [("z", "x", "y")]


def test_seed_shuffles_like_the_original_compiler() -> None:
    """random.Random(seed).shuffle over the list of rows, so the same seed gives the same order."""
    spec = {"axes": {"a": [str(i) for i in range(7)], "b": ["p", "q", "r"]}, "output": {"seed": 17}}
    expected = list(product([str(i) for i in range(7)], ["p", "q", "r"]))
    random.Random(17).shuffle(expected)
    compiled = ok(spec)
    assert list(compiled.rows()) == expected
    assert list(compiled.rows(seed=3)) != expected
    assert sorted(compiled.rows(seed=3)) == sorted(expected)


# --- replicate axes ---------------------------------------------------------------------------


def test_replicate_axes_take_positive_integers() -> None:
    compiled = ok(
        {"axes": {"draft_template": ["d"], "draft_replicate": [1, 2], "evaluation_template_replicate": ["1"]}}
    )
    assert [r["draft_replicate"] for r in rows(compiled)] == ["1", "2"]
    found = errors({"axes": {"draft_replicate": [0, "two"]}})
    must = "is not a replicate index: it must be a positive integer (1, 2, ...)"
    assert found == [
        f"{SPEC}: error: axes.draft_replicate[0]: draft_replicate '0' {must}",
        f"{SPEC}: error: axes.draft_replicate[1]: draft_replicate 'two' {must}",
    ]


def test_an_unknown_column_is_compiled_with_a_warning() -> None:
    compiled, problems = compile_spec(doc({"axes": {"model_replicate": ["1"]}}))
    assert compiled is not None
    assert [p.level for p in problems] == [Level.WARNING]
    assert "column 'model_replicate' is not one daydreamd knows" in str(problems[0])


# --- includes ---------------------------------------------------------------------------------


def test_csv_includes_one_column_levels_several_columns_tuples() -> None:
    compiled = ok(
        {
            "axes": {"draft_template": "@file:items/drafts.csv"},
            "rules": {
                "tuples": {
                    "t": {"axes": ["essay_template", "essay_llm"], "items": "@file:./items//bundle.csv"}
                }
            },
        },
        files={
            "items/drafts.csv": "draft_template\nd1\n\n d2 \nd1\n",
            "items/bundle.csv": "essay_template,essay_llm\ne1,m1\ne2, m2\n",
        },
    )
    assert list(compiled.rows()) == [
        ("d1", "e1", "m1"),
        ("d1", "e2", "m2"),
        ("d2", "e1", "m1"),
        ("d2", "e2", "m2"),
    ]


def test_text_includes_give_their_lines() -> None:
    compiled = ok({"axes": {"draft_template": "@file:drafts.txt"}}, files={"drafts.txt": "d1\n\n  d2\n"})
    assert [r["draft_template"] for r in rows(compiled)] == ["d1", "d2"]


@pytest.mark.parametrize(
    ("ref", "files", "expected"),
    [
        (
            "@file:../other/levels.csv",
            {},
            f"{SPEC}: error: axes.draft_template: include '@file:../other/levels.csv' is refused",
        ),
        ("@file:items/../../x.csv", {}, "is refused: an include must name a file inside the spec's folder"),
        ("@file:/etc/passwd", {}, "is refused"),
        ("@file:missing.csv", {}, "no such file cohorts/c/spec/missing.csv"),
        ("@file:levels.yaml", {"levels.yaml": "- a\n"}, "unsupported file type '.yaml'; use .csv or .txt"),
        (
            "@file:levels.csv",
            {"levels.csv": ""},
            "cohorts/c/spec/levels.csv:1: error: an included CSV needs a header row",
        ),
        ("@file:levels.csv", {"levels.csv": "draft_template\n"}, "needs data rows below its header"),
        ("@file:levels.csv", {"levels.csv": "a,b\nx,y\n"}, "an axis takes one column"),
    ],
)
def test_include_errors(ref: str, files: dict[str, str], expected: str) -> None:
    found = errors({"axes": {"draft_template": ref}}, files=files)
    assert any(expected in line for line in found), found


def test_an_empty_cell_in_a_multi_column_include_is_reported_at_its_csv_line() -> None:
    found = errors(
        {"rules": {"tuples": {"t": {"axes": ["essay_template", "essay_llm"], "items": "@file:b.csv"}}}},
        files={"b.csv": "essay_template,essay_llm\ne1,m1\ne2,\n"},
    )
    assert found == [
        "cohorts/c/spec/b.csv:3: error: column 'essay_llm': row has no value in column 'essay_llm' "
        "(included by rules.tuples.t.items); every cell of a multi-column include must be filled"
    ]


def test_a_refused_include_reports_the_edges_reason() -> None:
    document = SpecDocument(
        path=SPEC,
        data={"axes": {"draft_template": "@file:leak.csv"}},
        refused={"leak.csv": "refused: it is a symbolic link to the file /etc/passwd, outside spec/"},
    )
    _, problems = compile_spec(document)
    assert [str(p) for p in problems] == [
        f"{SPEC}: error: axes.draft_template: include '@file:leak.csv': refused: it is a symbolic link "
        "to the file /etc/passwd, outside spec/"
    ]


def test_include_targets_and_refs() -> None:
    assert include_target("@file:items/a.csv") == "items/a.csv"
    assert include_target("@file:./items//a.csv") == "items/a.csv"
    assert include_target("@file:items/../a.csv") == "a.csv"
    for bad in ("@file:../a.csv", "@file:/a.csv", "@file:", "@file:..", "@file:a\\..\\b"):
        assert include_target(bad) is None, bad
    data = {
        "axes": {"a": "@file:a.csv", "b": ["@file:not-a-ref-here"]},
        "rules": {"x": [{"items": "@file:c.csv"}]},
    }
    assert list(include_refs(data)) == ["@file:a.csv", "@file:not-a-ref-here", "@file:c.csv"]


# --- catalog ----------------------------------------------------------------------------------


CATALOG = Catalog(
    draft_templates=frozenset({"d1", "d2"}),
    essay_templates=frozenset({"e1"}),
    evaluation_templates=frozenset({"v1"}),
    generation_models=frozenset({"m1"}),
    evaluation_models=frozenset({"j1"}),
    combos=frozenset({"combo_v1_aaa"}),
)


def test_catalog_accepts_known_ids() -> None:
    spec = {
        "axes": {
            "combo_id": ["combo_v1_aaa"],
            "draft_template": ["d1", "d2"],
            "draft_llm": ["m1"],
            "essay_template": ["e1"],
            "essay_llm": ["m1"],
            "evaluation_template": ["v1"],
            "evaluation_llm": ["j1"],
        }
    }
    assert ok(spec, catalog=CATALOG).count == 2


def test_catalog_reports_each_unknown_id_where_it_was_written() -> None:
    compiled, problems = compile_spec(
        doc(
            {
                "axes": {"draft_template": "@file:d.csv", "combo_id": ["combo_v1_zzz"]},
                "rules": {
                    "tuples": {
                        "t": {"axes": ["evaluation_template", "evaluation_llm"], "items": [["v1", "m1"]]}
                    }
                },
            },
            files={"d.csv": "draft_template\nd1\nd9\n"},
            lines={("rules", "tuples", "t", "items", 0): 7},
        ),
        CATALOG,
    )
    assert compiled is None
    assert [str(p) for p in problems] == [
        "cohorts/c/spec/d.csv:3: error: axes.draft_template: draft_template 'd9' is not a draft template in "
        "1_raw/draft_templates.csv (templates and models need not be active, but must exist)",
        f"{SPEC}: error: axes.combo_id[0]: combo_id 'combo_v1_zzz' is not a combo in combo_mappings.csv",
        f"{SPEC}:7: error: rules.tuples.t.items[0]: evaluation_llm 'm1' is not an evaluation model in "
        "1_raw/llm_models.csv (templates and models need not be active, but must exist)",
    ]


def test_without_combos_in_the_catalog_combo_ids_are_not_checked() -> None:
    catalog = Catalog(draft_templates=frozenset({"d1"}))
    assert ok({"axes": {"combo_id": ["anything"], "draft_template": ["d1"]}}, catalog=catalog).count == 1


def test_problem_type_is_the_cores() -> None:
    _, problems = compile_spec(doc({"axes": {"a": "x"}}))
    assert all(isinstance(p, Problem) for p in problems)
