"""Prompt templates: strict, sandboxed Jinja2 rendering under limits, and static checks (pure).

Templates are written by researchers and rendered thousands of times, so mistakes must surface
at validation time, not after money was spent: a syntax error, or a variable the stage does not
provide, is reported with the template's line. Rendering uses ``StrictUndefined`` (a typo is an
error, never an empty string) inside a sandbox, with Jinja2's default options so output is
identical to plain ``jinja2.Template`` for ordinary templates.

Templates are also untrusted code run by a service that holds a paid key. The sandbox keeps
them from Python's internals; :class:`RenderLimits` keeps them from the machine's resources.
This module enforces what can be checked from inside a render (the prompt's size, string
repetition and powers that would explode); the time and memory budgets need a process that
can be killed, which ``daydreamd.sandbox`` provides around :class:`Renderer`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jinja2
from jinja2 import meta, nodes
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from daydreamd.core.errors import TemplateError, TemplateLimitError
from daydreamd.core.problems import Problem, error
from daydreamd.core.stages import CONCEPT_ATTRIBUTES, TEMPLATE_VARIABLES, Stage

MAX_TEMPLATE_CHARS = 64 * 1024
"""Longest template text: real ones are a few kilobytes, and Jinja2 parses about 0.25 MB a second
of the worst kind of text (a million tiny expressions), in the service, at every rebuild."""
MAX_POWER_BITS = 4096
"""Largest integer ``a ** b`` a template may compute (in bits): enough for any arithmetic a
prompt needs, far below the sizes that take seconds or gigabytes (``10**10**10``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderLimits:
    """``[render]``: what one render of one template may use.

    A template that exceeds a limit fails its generation as ``render_error`` naming the limit;
    ``validate`` renders every template once on sample inputs under the same limits.
    """

    timeout_s: float = 2.0
    """Wall-clock time for one render; the rendering process is killed past it."""
    max_bytes: int = 1_000_000
    """Largest prompt (UTF-8 bytes); no model takes more than a few hundred kilobytes."""
    memory_mb: int = 1024
    """Address space of a rendering process (it holds Python, Jinja2 and one render)."""
    workers: int = 2
    """Rendering processes; each renders one prompt at a time."""


class PromptRenderer(Protocol):
    """What renders a template: :class:`Renderer` in-process, or a sandboxing process around it."""

    def render(self, text: str, variables: Mapping[str, Any], *, template_id: str, stage: str) -> str: ...


class _LimitedEnvironment(SandboxedEnvironment):
    """The sandbox, with ``*`` and ``**`` checked before they run.

    Without the check ``{{ "a" * 10**9 }}`` allocates a gigabyte before the size limit can see
    a byte of output, and ``{{ 10**10**10 }}`` computes for hours inside one C call. Intercepted
    operators are also never folded at compile time, so compiling such a template is cheap.
    """

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, max_bytes: int) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False)
        self.max_bytes = max_bytes

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repetition(left, right, self.max_bytes)
        elif operator == "**":
            _check_power(left, right)
        return super().call_binop(context, operator, left, right)


class _LimitExceeded(Exception):
    """Raised inside a render; :meth:`Renderer.render` names the template and re-raises it."""


def _check_repetition(left: Any, right: Any, max_bytes: int) -> None:
    for sequence, times in ((left, right), (right, left)):
        if isinstance(sequence, str | list | tuple) and isinstance(times, int):
            size = len(sequence) * times
            if size > max_bytes:
                raise _LimitExceeded(
                    f"repetition would make {size:,} items, above the prompt limit of "
                    f"{max_bytes:,} bytes (render.max_bytes)"
                )


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
        bits = exponent * math.log2(abs(base))
        if bits > MAX_POWER_BITS:
            raise _LimitExceeded(f"power would have about {int(bits):,} bits; the limit is {MAX_POWER_BITS}")


def make_environment(max_bytes: int = RenderLimits().max_bytes) -> SandboxedEnvironment:
    """The one way templates are compiled: sandboxed, strict, limited, otherwise Jinja2's defaults."""
    return _LimitedEnvironment(max_bytes)


def _analysis_environment() -> SandboxedEnvironment:
    """An environment for reading templates without running any of their code.

    Jinja2 folds constant expressions while it compiles, and the static checks compile: a
    filter with constant arguments (``{{ "a"|center(10**9) }}``) would run right there, in the
    service, outside every limit. Here every filter and test refuses to run, so folding gives
    up and the checks only read the template.
    """
    env = make_environment()
    env.filters = {name: _refuse for name in env.filters}
    env.tests = {name: _refuse for name in env.tests}
    return env


def _refuse(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("templates are not evaluated while they are checked")


class Renderer:
    """Compiles each distinct template text once and renders it many times, within ``limits``.

    One renderer per process or per batch; it is not shared through module globals. In the
    service it runs inside a rendering process (see ``daydreamd.sandbox``), which adds the
    time and memory limits a render cannot enforce on itself.
    """

    def __init__(self, limits: RenderLimits | None = None) -> None:
        self.limits = limits or RenderLimits()
        self._env = make_environment(self.limits.max_bytes)
        self._compiled: dict[str, jinja2.Template] = {}

    def render(self, text: str, variables: Mapping[str, Any], *, template_id: str, stage: str) -> str:
        """Render ``text`` with ``variables``; raise TemplateError naming the template on failure."""
        compiled = self._compiled.get(text)
        try:
            if compiled is None:
                compiled = self._compiled[text] = self._env.from_string(text)
            return self._bounded(compiled.generate(**variables), template_id=template_id, stage=stage)
        except _LimitExceeded as exc:
            message = f"template {stage}/{template_id}: {exc}"
            raise TemplateLimitError(message, template_id=template_id, stage=stage) from None
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

    def _bounded(self, chunks: Iterator[str], *, template_id: str, stage: str) -> str:
        """Join the output, stopping as soon as it passes ``max_bytes`` (not after building it all)."""
        parts, size, limit = [], 0, self.limits.max_bytes
        for chunk in chunks:
            size += len(chunk) if chunk.isascii() else len(chunk.encode())
            if size > limit:
                raise TemplateLimitError(
                    f"template {stage}/{template_id}: the prompt is larger than {limit:,} bytes "
                    "(render.max_bytes); check the template's loops and repetitions",
                    template_id=template_id,
                    stage=stage,
                )
            parts.append(chunk)
        return "".join(parts)


def check_template(stage: Stage, path: str, text: str) -> list[Problem]:
    """Syntax errors and variables the stage does not provide, each with its template line.

    Whatever a template's text provokes in Jinja2's parser or in the analysis (a 5,000-digit
    number, expressions nested thousands deep) is a problem on its file, never an exception:
    the service reads these texts while it runs.
    """
    if len(text) > MAX_TEMPLATE_CHARS:
        limit = f"{MAX_TEMPLATE_CHARS:,}"
        return [error(path, f"template is {len(text):,} characters long; the limit is {limit} (split it up)")]
    try:
        return _check(stage, path, text)
    except jinja2.TemplateSyntaxError as exc:
        return [error(path, f"Jinja syntax error: {exc.message}", line=exc.lineno)]
    except RecursionError:
        return [error(path, "template is nested too deeply for Jinja to read; simplify it")]
    except (ArithmeticError, ValueError, MemoryError, LookupError, TypeError) as exc:
        reason = str(exc).split(";")[0][:200]
        return [error(path, f"Jinja cannot read this template: {type(exc).__name__}: {reason}")]


def _check(stage: Stage, path: str, text: str) -> list[Problem]:
    ast = _analysis_environment().parse(text)
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
