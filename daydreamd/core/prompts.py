"""Prompts: what each stage's template is given, and rendering it (pure).

The runner and ``daydreamctl render`` both render through ``render_prompt``, so a dry run shows
exactly the prompt a real run would send.
"""

from __future__ import annotations

from typing import Any

from daydreamd.core.errors import TemplateError
from daydreamd.core.jobs import Job
from daydreamd.core.stages import Stage
from daydreamd.core.templates import PromptRenderer


def stage_variables(job: Job, parent_text: str | None) -> dict[str, Any]:
    """The variables a stage's templates get (see ``stages.TEMPLATE_VARIABLES``)."""
    if job.stage is Stage.DRAFT:
        return {"concepts": [{"name": name, "content": content} for name, content in job.concepts]}
    if job.stage is Stage.ESSAY:
        return {"draft_block": parent_text, "links_block": parent_text}
    return {"response": parent_text}


def render_prompt(renderer: PromptRenderer, job: Job, parent_text: str | None) -> str:
    """The prompt for ``job``; raises TemplateError naming the template."""
    if job.template.text is None:
        raise TemplateError(
            "template has no text", template_id=job.template.template_id, stage=str(job.stage)
        )
    return renderer.render(
        job.template.text,
        stage_variables(job, parent_text),
        template_id=job.template.template_id,
        stage=str(job.stage),
    )


def normalize_newlines(text: str) -> str:
    """CRLF and CR become LF, so templates and parsers see one kind of line ending."""
    return text.replace("\r\n", "\n").replace("\r", "\n")
