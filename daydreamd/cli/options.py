"""The click settings and options shared by ``daydreamctl``'s verb modules, defined once here.

Every command uses :data:`CONTEXT`; an option used by one module only stays in that module.
This module imports nothing but click, so loading it costs the verbs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
"""``context_settings`` of the group and of every command: ``-h`` as well as ``--help``, 100 columns."""
STAGE_CHOICE = click.Choice(["draft", "essay", "evaluation"])
"""The stages, as a value for an argument or option."""


def json_option(func: F) -> F:
    """``--json``: machine-readable output (``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(func)


def template_option(func: F) -> F:
    """``--template T``: narrow to one template (``template_id``)."""
    return click.option("--template", "template_id", help="Only generations of this template id.")(func)


def model_option(func: F) -> F:
    """``--model M``: narrow to one model (``llm_model_id``)."""
    return click.option("--model", "llm_model_id", help="Only generations on this model id.")(func)


def cohort_option(func: F) -> F:
    """``--cohort NAME``: act on one cohort (``cohort``): a named one, or the default one's id."""
    return click.option(
        "--cohort",
        "cohort",
        metavar="NAME",
        help="Only this cohort: a spec folder's name (default: the default cohort; see `cohort list`).",
    )(func)


def batch_option(func: F) -> F:
    """``--batch/--online``: calls in batches, or one by one (``batch``; unset: as the config says)."""
    return click.option(
        "--batch/--online",
        "batch",
        default=None,
        help="Send the calls in batches (about half price, back within 24 h; the model needs an endpoint "
        "with batch = true), or one by one online. Default: as [stages.<stage>] / [models.<id>] batch say.",
    )(func)
