"""Prompt templates: strict, sandboxed Jinja2 rendering and static checks (pure).

Templates are written by researchers and rendered thousands of times, so mistakes must surface
at validation time, not after money was spent: a syntax error, or a variable the stage does not
provide, is reported with the template's line. Rendering uses ``StrictUndefined`` (a typo is an
error, never an empty string) inside a sandbox, with Jinja2's default options so output is
identical to plain ``jinja2.Template`` for ordinary templates.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from daydreamd.core.errors import TemplateError
from daydreamd.core.problems import Problem, error
from daydreamd.core.stages import CONCEPT_ATTRIBUTES, TEMPLATE_VARIABLES, Stage


def make_environment() -> SandboxedEnvironment:
    """The one way templates are compiled: sandboxed, strict, otherwise Jinja2's defaults."""
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


class Renderer:
    """Compiles each distinct template text once and renders it many times.

    One renderer per process or per batch; it is not shared through module globals.
    """

    def __init__(self) -> None:
        self._env = make_environment()
        self._compiled: dict[str, jinja2.Template] = {}

    def render(self, text: str, variables: Mapping[str, Any], *, template_id: str, stage: str) -> str:
        """Render ``text`` with ``variables``; raise TemplateError naming the template on failure."""
        compiled = self._compiled.get(text)
        try:
            if compiled is None:
                compiled = self._compiled[text] = self._env.from_string(text)
            return compiled.render(**variables)
        except jinja2.TemplateError as exc:
            lineno = getattr(exc, "lineno", None)  # syntax errors know their line
            where = f" (line {lineno})" if lineno else ""
            message = f"template {stage}/{template_id}{where}: {type(exc).__name__}: {exc.message or exc}"
            raise TemplateError(message, template_id=template_id, stage=stage) from exc
        except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError) as exc:
            # Runtime errors inside template expressions ({{ 1 / n }}, a bad index) are the
            # template's fault too: report them as such instead of crashing the caller.
            message = f"template {stage}/{template_id}: {type(exc).__name__}: {exc}"
            raise TemplateError(message, template_id=template_id, stage=stage) from exc


def check_template(stage: Stage, path: str, text: str) -> list[Problem]:
    """Syntax errors and variables the stage does not provide, each with its template line."""
    try:
        ast = make_environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        return [error(path, f"Jinja syntax error: {exc.message}", line=exc.lineno)]
    except RecursionError:
        return [error(path, "template is nested too deeply for Jinja to parse; simplify it")]
    allowed = TEMPLATE_VARIABLES[stage]
    problems = []
    for name in sorted(meta.find_undeclared_variables(ast) - allowed):
        message = (
            f"uses variable '{name}', which {stage} templates are not given "
            f"(available: {', '.join(sorted(allowed))})"
        )
        problems.append(error(path, message, line=_first_use(ast, name)))
    if stage is Stage.DRAFT:
        problems.extend(_check_concept_attributes(path, ast))
    return problems


def _first_use(ast: nodes.Template, name: str) -> int | None:
    lines = [n.lineno for n in ast.find_all(nodes.Name) if n.name == name and n.ctx == "load"]
    return min(lines) if lines else None


def _check_concept_attributes(path: str, ast: nodes.Template) -> list[Problem]:
    """Each concept offers only ``name`` and ``content``; anything else would fail at render time."""
    loop_vars = {
        loop.target.name
        for loop in ast.find_all(nodes.For)
        if _is_concepts(loop.iter) and isinstance(loop.target, nodes.Name)
    }
    problems = []
    for lineno, attr in _concept_lookups(ast, loop_vars):
        if attr not in CONCEPT_ATTRIBUTES:
            message = (
                f"uses '{attr}' of a concept; concepts offer only {', '.join(sorted(CONCEPT_ATTRIBUTES))}"
            )
            problems.append(error(path, message, line=lineno))
    return problems


def _is_concepts(node: nodes.Node) -> bool:
    """``concepts``, possibly through filters such as ``concepts | reverse``."""
    while isinstance(node, nodes.Filter) and node.node is not None:
        node = node.node
    return isinstance(node, nodes.Name) and node.name == "concepts"


def _concept_lookups(ast: nodes.Template, loop_vars: set[str]) -> Iterator[tuple[int, str]]:
    """(line, attribute) for each ``concept.x`` / ``concept['x']`` / ``concepts[i].x`` lookup."""

    def is_concept(node: nodes.Node) -> bool:
        if isinstance(node, nodes.Name):
            return node.name in loop_vars
        return (
            isinstance(node, nodes.Getitem)
            and isinstance(node.node, nodes.Name)
            and node.node.name == "concepts"
        )

    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and is_concept(node.node):
            yield node.lineno, node.attr
        elif (
            isinstance(node, nodes.Getitem)
            and is_concept(node.node)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            yield node.lineno, node.arg.value
