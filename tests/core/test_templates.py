"""Tests for daydreamd.core.templates: static checks with lines, and strict sandboxed rendering."""

from __future__ import annotations

import resource
import time

import jinja2
import pytest
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError

from daydreamd.core.errors import TemplateError, TemplateLimitError
from daydreamd.core.problems import Level
from daydreamd.core.stages import Stage
from daydreamd.core.templates import Renderer, RenderLimits, check_template

PATH = "1_raw/templates/draft/t.txt"
CONCEPTS = [{"name": "Alpha", "content": "First idea."}, {"name": "Beta", "content": "Second idea."}]


# --- check_template ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "text"),
    [
        (Stage.DRAFT, "{% for concept in concepts %}{{ concept.name }}: {{ concept.content }}\n{% endfor %}"),
        (
            Stage.DRAFT,
            "{% for c in concepts %}{{ loop.index }}. {{ c['name'] }}"
            "{% if not loop.last %}, {% endif %}{% endfor %}",
        ),
        (Stage.DRAFT, "{{ concepts | length }} {{ concepts[0].name }} {{ concepts[1]['content'] }}"),
        (Stage.DRAFT, "{% raw %}{{ response }} {{ concept.title }}{% endraw %}{{ concepts }}"),
        (Stage.DRAFT, "{% set n = concepts | length %}{{ n }}"),
        (Stage.DRAFT, "No variables at all.\n"),
        (Stage.ESSAY, "{{ draft_block }}\n{{ links_block }}"),
        (Stage.EVALUATION, "{{ response }}\nSCORE: X"),
    ],
)
def test_valid_templates_have_no_problems(stage: Stage, text: str) -> None:
    """Templates using only their stage's variables and concept fields pass, including raw blocks."""
    assert check_template(stage, PATH, text) == []


@pytest.mark.parametrize(
    ("stage", "text", "line", "word"),
    [
        pytest.param(Stage.DRAFT, "ok\n\n{{ concepts | }}", 3, "Jinja syntax error", id="syntax-bad-filter"),
        pytest.param(
            Stage.DRAFT, "{% for c in concepts %}\n{{ c }}\n", 2, "Jinja syntax error", id="syntax-unclosed"
        ),
        pytest.param(Stage.ESSAY, "a\n{% endif %}", 2, "Jinja syntax error", id="syntax-stray-end"),
        pytest.param(
            Stage.DRAFT, "{{ concepts }}\n{{ response }}", 2, "variable 'response'", id="draft-response"
        ),
        pytest.param(Stage.DRAFT, "{{ draft_block }}", 1, "variable 'draft_block'", id="draft-draft-block"),
        pytest.param(
            Stage.ESSAY, "{{ draft_block }}\n\n{{ concepts }}", 3, "variable 'concepts'", id="essay-concepts"
        ),
        pytest.param(Stage.ESSAY, "{{ response }}", 1, "variable 'response'", id="essay-response"),
        pytest.param(
            Stage.EVALUATION,
            "{{ response }}\n{{ draft_block }}",
            2,
            "variable 'draft_block'",
            id="eval-draft-block",
        ),
        pytest.param(
            Stage.EVALUATION,
            "{% for x in concepts %}\n{% endfor %}",
            1,
            "variable 'concepts'",
            id="eval-concepts",
        ),
        pytest.param(Stage.EVALUATION, "{{ respnse }}", 1, "variable 'respnse'", id="typo"),
        pytest.param(
            Stage.DRAFT,
            "{% for concept in concepts %}\n\n{{ concept.title }}{% endfor %}",
            3,
            "'title' of a concept",
            id="loop-var-attr",
        ),
        pytest.param(
            Stage.DRAFT,
            "{% for c in concepts %}{{ c['title'] }}{% endfor %}",
            1,
            "'title'",
            id="loop-var-item",
        ),
        pytest.param(Stage.DRAFT, "x\n{{ concepts[0].description }}", 2, "'description'", id="indexed-attr"),
        pytest.param(Stage.DRAFT, "{{ concepts[1]['id'] }}", 1, "'id' of a concept", id="indexed-item"),
    ],
)
def test_bad_templates_report_one_error_with_its_line(stage: Stage, text: str, line: int, word: str) -> None:
    """Syntax errors, variables the stage lacks and unknown concept fields are errors on their line."""
    problems = check_template(stage, PATH, text)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert (problem.level, problem.path, problem.line, problem.column) == (Level.ERROR, PATH, line, None)
    assert word in problem.message


def test_unknown_variable_message_lists_what_is_available() -> None:
    """The message for an unknown variable names the stage's variables, so the fix is obvious."""
    (problem,) = check_template(Stage.ESSAY, PATH, "{{ concepts }}")
    assert "essay templates are not given" in problem.message
    assert "draft_block, links_block" in problem.message


def test_every_unknown_variable_is_reported_once_at_first_use() -> None:
    """Several unknown variables give one error each, at the line of their first use."""
    problems = check_template(Stage.DRAFT, PATH, "{{ b }}\n{{ a }}\n{{ b }}\n{{ concepts }}")
    assert [(p.line, p.message.split("'")[1]) for p in problems] == [(2, "a"), (1, "b")]


def test_concept_attribute_check_sees_filtered_loops() -> None:
    """A loop over `concepts | reverse` still yields concepts, so `.title` on them is reported."""
    problems = check_template(
        Stage.DRAFT, PATH, "{% for c in concepts | reverse %}\n{{ c.title }}{% endfor %}"
    )
    assert [(p.line, "'title'" in p.message) for p in problems] == [(2, True)]


def test_deeply_nested_template_is_a_problem_not_an_exception() -> None:
    """Bad input never raises: a template nested too deeply to parse is reported as a problem."""
    problems = check_template(Stage.ESSAY, PATH, "{{ " + "(" * 200 + "draft_block" + ")" * 200 + " }}")
    assert [p.level for p in problems] == [Level.ERROR]


# --- Renderer: same output as plain Jinja2 -----------------------------------------------------

PLAIN_CASES = [
    pytest.param("Hello {{ name }}!", {"name": "World"}, id="simple"),
    pytest.param("Hello {{ name }}\n", {"name": "World"}, id="one-trailing-newline-dropped"),
    pytest.param("Hello {{ name }}\n\n", {"name": "World"}, id="two-trailing-newlines"),
    pytest.param("\n  lead\n", {}, id="leading-whitespace"),
    pytest.param("a\r\nb\r\n", {}, id="crlf"),
    pytest.param(
        "{% for c in concepts %}\n- {{ c.name }}: {{ c.content }}\n{% endfor %}\nend\n",
        {"concepts": CONCEPTS},
        id="for-loop-block-newlines",
    ),
    pytest.param(
        "- {% for c in concepts %}{{ c.name }}{% if not loop.last %}\n- {% endif %}{% endfor %}\n",
        {"concepts": CONCEPTS},
        id="loop-last",
    ),
    pytest.param("{% raw %}{{ i }} {% x %}{% endraw %}\n{{ n }}", {"n": 3}, id="raw-block"),
    pytest.param(
        "{{ concepts | length }} {{ text | upper }} {{ '<b>' }}",
        {"concepts": CONCEPTS, "text": "a"},
        id="filters",
    ),
    pytest.param("{%- if x %}  yes  {%- endif -%}\n", {"x": True}, id="whitespace-control"),
    pytest.param("{# comment #}kept", {}, id="comment"),
]


@pytest.mark.parametrize(("text", "variables"), PLAIN_CASES)
def test_renderer_output_is_identical_to_plain_jinja(text: str, variables: dict[str, object]) -> None:
    """Ordinary templates render byte for byte as with jinja2.Template, trailing newlines included."""
    rendered = Renderer().render(text, variables, template_id="t", stage="draft")
    assert rendered == jinja2.Template(text).render(**variables)


def test_renderer_does_not_escape_html() -> None:
    """Prompts are plain text: markup in variables is passed through unescaped."""
    assert Renderer().render("{{ x }}", {"x": "<a & b>"}, template_id="t", stage="essay") == "<a & b>"


def test_renderer_reuses_compiled_text_with_new_variables() -> None:
    """Rendering the same text again with other variables gives the new output, not a cached one."""
    renderer = Renderer()
    assert renderer.render("{{ x }}", {"x": 1}, template_id="t", stage="draft") == "1"
    assert renderer.render("{{ x }}", {"x": 2}, template_id="t", stage="draft") == "2"
    assert renderer.render("{{ x }}!", {"x": 2}, template_id="u", stage="draft") == "2!"


# --- Renderer: failures are TemplateErrors naming the template ----------------------------------

FAILURE_CASES = [
    pytest.param(
        "Hi {{ nme }}", {"name": "x"}, UndefinedError, "'nme' is undefined", id="undefined-variable"
    ),
    pytest.param(
        "{% for c in concepts %}{{ c.title }}{% endfor %}",
        {"concepts": CONCEPTS},
        UndefinedError,
        "title",
        id="undefined-attribute",
    ),
    pytest.param("{{ x | length }}", {}, UndefinedError, "'x' is undefined", id="undefined-in-filter"),
    pytest.param("{{ ''.__class__.__mro__ }}", {}, SecurityError, "__class__", id="sandbox-class"),
    pytest.param(
        "{{ ().__class__.__bases__[0].__subclasses__() }}",
        {},
        SecurityError,
        "unsafe",
        id="sandbox-subclasses",
    ),
    pytest.param("{{ x.__globals__ }}", {"x": lambda: 0}, SecurityError, "__globals__", id="sandbox-globals"),
    pytest.param("ok\n{% if %}", {}, TemplateSyntaxError, "line 2", id="syntax-error"),
]


@pytest.mark.parametrize(("text", "variables", "cause", "word"), FAILURE_CASES)
def test_render_failures_raise_template_error_naming_the_template(
    text: str, variables: dict[str, object], cause: type[Exception], word: str
) -> None:
    """Undefined names (StrictUndefined), sandbox violations and syntax errors become TemplateError."""
    with pytest.raises(TemplateError) as info:
        Renderer().render(text, variables, template_id="my-template", stage="draft")
    assert isinstance(info.value.__cause__, cause)
    assert (info.value.template_id, info.value.stage) == ("my-template", "draft")
    message = str(info.value)
    assert "draft/my-template" in message
    assert cause.__name__ in message
    assert word in message


def test_undefined_is_strict_even_when_only_tested_for_output() -> None:
    """A typo never renders as an empty string: even `{{ x ~ '' }}` with x missing fails."""
    with pytest.raises(TemplateError):
        Renderer().render("[{{ missing ~ '' }}]", {}, template_id="t", stage="essay")


def test_runtime_errors_while_rendering_are_template_errors() -> None:
    """Any failure while rendering (here a division by zero) is a TemplateError naming the template."""
    with pytest.raises(TemplateError, match="draft/t"):
        Renderer().render("{{ 1 / n }}", {"n": 0}, template_id="t", stage="draft")


# --- Renderer: limits a render enforces on itself ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "word"),
    [
        pytest.param('{{ "a" * 10**8 }}', "repetition would make 100,000,000", id="string-repetition"),
        pytest.param("{{ 10**8 * [0] }}", "repetition would make 100,000,000", id="list-repetition"),
        pytest.param("{{ 7 ** 100000 }}", "power would have about", id="huge-power"),
        pytest.param(
            "{% for i in range(20000) %}{{ 'x' * 100 }}{% endfor %}",
            "larger than 1,000,000 bytes",
            id="output",
        ),
    ],
)
def test_render_limits_stop_a_template_before_it_grows(text: str, word: str) -> None:
    """Repetition, powers and the output itself are capped, each reported as a TemplateLimitError."""
    with pytest.raises(TemplateLimitError) as info:
        Renderer().render(text, {}, template_id="bomb", stage="draft")
    assert word in str(info.value)
    assert "draft/bomb" in str(info.value)


def test_output_limit_counts_utf8_bytes_and_allows_what_fits() -> None:
    """A prompt exactly at the limit renders; one byte more (a 2-byte character) does not."""
    limits = RenderLimits(max_bytes=1000)
    assert len(Renderer(limits).render("{{ 'a' * 1000 }}", {}, template_id="t", stage="draft")) == 1000
    with pytest.raises(TemplateLimitError):
        Renderer(limits).render("{{ 'a' * 999 }}é", {}, template_id="t", stage="draft")


def test_ordinary_arithmetic_still_works_under_the_limits() -> None:
    text = "{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ 3 * 4 }} {{ '%05d' % 42 }} {{ [1] * 3 }}"
    assert Renderer().render(text, {}, template_id="t", stage="draft") == "1024 ababab 12 00042 [1, 1, 1]"


def test_the_format_attr_sandbox_escape_is_blocked() -> None:
    """CVE-2025-27516: ``|attr("format")`` on a string reached Python internals before Jinja2 3.1.6."""
    text = '{{ "{0.__class__.__mro__}" | attr("format")("x") }}'
    with pytest.raises(TemplateError) as info:
        Renderer().render(text, {}, template_id="t", stage="draft")
    assert isinstance(info.value.__cause__, SecurityError)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{{ "a" | center(400000000) }}', id="constant-filter"),
        pytest.param('{{ "%0400000000d" % 1 }}', id="constant-format"),
        pytest.param('{{ "a" * 400000000 }}', id="constant-repetition"),
        pytest.param("{{ 3 ** 3000000 }}", id="constant-power"),
    ],
)
def test_static_checks_never_evaluate_the_template(text: str) -> None:
    """Jinja2 folds constants while compiling: the checks must not, or validating is the attack."""
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert check_template(Stage.DRAFT, "templates/draft/t.txt", text) == []
    assert time.monotonic() - started < 1.0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100


@pytest.mark.parametrize(
    ("text", "word"),
    [
        pytest.param(
            "{{ " + "9" * 5000 + " }}", "Jinja cannot read this template: ValueError", id="long-number"
        ),
        pytest.param("{{ concepts" + "|e" * 5000 + " }}", "nested too deeply", id="filter-chain"),
        pytest.param("{{ x" + ".a" * 20000 + " }}", "nested too deeply", id="attribute-chain"),
        pytest.param("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nested too deeply", id="parentheses"),
    ],
)
def test_texts_that_break_jinja2_itself_are_problems_not_exceptions(text: str, word: str) -> None:
    """The service reads templates while it runs: nothing in one may raise out of the checks."""
    (problem,) = check_template(Stage.DRAFT, "1_raw/templates/draft/t.txt", text)
    assert problem.level is Level.ERROR and word in problem.message


def test_a_template_over_the_length_limit_is_refused_before_jinja2_reads_it() -> None:
    """Parsing a million tiny expressions takes Jinja2 most of a minute, at every rebuild."""
    started = time.monotonic()
    (problem,) = check_template(Stage.DRAFT, "t.txt", "{{ concepts }}" * 1_000_000)
    assert time.monotonic() - started < 0.5
    assert problem.level is Level.ERROR and "the limit is 65,536" in problem.message
    assert check_template(Stage.DRAFT, "t.txt", "{{ concepts }}" * 4000) == []
