"""What ``daydreamctl``'s verb modules share: the verbs' context, the service connection, output.

:class:`Context` is what every verb gets (``click.pass_obj``). :func:`service` opens the control
socket through :mod:`daydreamd.cli.client` and turns its errors into CLI errors: exit 1 when the
service refuses, 3 (:data:`EXIT_UNREACHABLE`) when it cannot be reached. The client is imported
inside :func:`service`, so verbs that never talk to the service pay nothing for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from daydreamd.core.config import Settings, load_settings
from daydreamd.core.errors import DaydreamError
from daydreamd.llm.registry import check_settings

if TYPE_CHECKING:
    from daydreamd.cli.client import ServiceClient

EXIT_UNREACHABLE = 3
"""The exit code when the service cannot be reached (the message names the socket tried)."""


class Context:
    """What every verb gets: the config path and the data dir override, resolved lazily."""

    def __init__(self, config: Path | None, data: Path | None) -> None:
        self.config = config
        self.data = data

    def settings(self) -> Settings:
        """Load the settings, turning config errors into a clean CLI error."""
        try:
            settings = load_settings(self.config, os.environ, data_dir=self.data)
            check_settings(settings)
        except DaydreamError as exc:
            raise click.ClickException(str(exc)) from exc
        return settings


class UnreachableError(click.ClickException):
    """The service cannot be reached: printed like any CLI error, but exits 3 so scripts can tell."""

    exit_code = EXIT_UNREACHABLE


@contextmanager
def service(obj: Context) -> Iterator[ServiceClient]:
    """A client for the configured socket; its errors become CLI errors (exit 1, or 3 if unreachable)."""
    from daydreamd.cli.client import ServiceClient, ServiceError, ServiceUnavailable

    settings = obj.settings()
    try:
        yield ServiceClient(settings.paths.socket, config=settings.config_path)
    except ServiceUnavailable as exc:
        raise UnreachableError(str(exc)) from exc
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc


def scope_body(
    stage: str,
    template_id: str | None,
    llm_model_id: str | None,
    limit: int | None,
    cohort: str | None = None,
) -> dict[str, Any]:
    """The JSON body of an approval, revocation or plan: the scope, and who asks (:func:`current_user`)."""
    from daydreamd.core.control import ApprovalRequest

    request = ApprovalRequest(
        stage=stage,
        template_id=template_id,
        llm_model_id=llm_model_id,
        limit=limit,
        requested_by=current_user(),
        cohort=cohort,
    )
    return request.to_dict()


def current_user() -> str:
    """The OS user name, recorded with approvals (the uid when the system has no name for it)."""
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid:{os.getuid()}"


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout, non-ASCII characters kept as they are."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))
