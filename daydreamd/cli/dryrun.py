"""``daydreamctl render``: render prompts to ``prompt.txt`` without calling any model.

It renders through :func:`daydreamd.core.prompts.render_prompt`, as the runner does, and in the
same rendering processes under the same ``[render]`` limits, so a dry run shows exactly the
prompt a real run would send, or the same render error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from daydreamd.core.errors import TemplateError
from daydreamd.core.experiment import Generator
from daydreamd.core.jobs import Job
from daydreamd.core.prompts import normalize_newlines, render_prompt
from daydreamd.core.stages import PARENT_STAGE
from daydreamd.core.templates import PromptRenderer
from daydreamd.storage.gens import PROMPT, GensStore


@dataclass(slots=True)
class RenderReport:
    """What a dry run did: counts per outcome and the failures by gen_id."""

    rendered: int = 0
    skipped_copy: int = 0
    waiting_for_parent: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape of ``daydreamctl render --json``."""
        return {
            "rendered": self.rendered,
            "skipped_copy": self.skipped_copy,
            "waiting_for_parent": self.waiting_for_parent,
            "failed": len(self.failures),
            "failures": self.failures,
        }


def render_to_files(
    store: GensStore, jobs: Iterable[Job], renderer: PromptRenderer, *, limit: int | None = None
) -> RenderReport:
    """Render the prompts whose inputs exist into ``prompt.txt``, calling no model.

    Drafts always have their inputs; essays and evaluations need their parent's ``parsed.txt``.
    Copy templates have no prompt. ``limit`` caps how many prompts are rendered.
    """
    report = RenderReport()
    for job in jobs:
        if limit is not None and report.rendered + len(report.failures) >= limit:
            break
        if job.template.generator is Generator.COPY:
            report.skipped_copy += 1
            continue
        parent_text = None
        parent_stage = PARENT_STAGE[job.stage]
        if parent_stage is not None:
            parent_text = store.read_parsed(parent_stage, job.generation.parent_gen_id)
            if parent_text is None:
                report.waiting_for_parent += 1
                continue
            parent_text = normalize_newlines(parent_text)
        try:
            prompt = render_prompt(renderer, job, parent_text)
        except TemplateError as exc:
            report.failures[job.gen_id] = str(exc)
            continue
        store.write(job.stage, job.gen_id, PROMPT, prompt)
        report.rendered += 1
    return report
