"""The fake server's Batch API (OpenAI's shape): files, batches, their states over time, results.

``POST /v1/files`` (multipart: ``purpose``, ``file``), ``GET /v1/files/{id}/content``,
``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``, ``metadata``),
``GET /v1/batches/{id}``, ``GET /v1/batches?after=&limit=`` (newest first, as OpenAI lists them),
``POST /v1/batches/{id}/cancel``.

A batch goes ``validating -> in_progress -> finalizing`` over ``delay_s`` (a third each) and then
ends ``completed`` (``expire``: ``expired``, with only the first half of its requests answered);
its result files are made when it ends: each request answered as the chat endpoint would answer it
(the same reply builder and usage), but every ``fail_every``-th request, which gets a 500 in the
error file. ``submissions`` counts each ``custom_id`` every time a batch holding it is created:
a client that submits a generation twice shows up there.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

if TYPE_CHECKING:
    from tests.fakellm import FakeLlm

_JSON = "application/json"


@dataclass(slots=True)
class _Batch:
    id: str
    input_file_id: str
    metadata: Mapping[str, Any]
    created_at: float
    requests: list[Mapping[str, Any]]
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    cancelled: bool = False


@dataclass(slots=True)
class FakeBatchApi:
    """The Batch API of one :class:`~tests.fakellm.FakeLlm` (see the module docstring)."""

    fake: FakeLlm
    delay_s: float = 0.5
    fail_every: int = 0
    expire: bool = False
    invalid: bool = False
    """Batches fail validation as a whole (status ``failed`` with ``errors``), nothing run."""
    poll_refusals: list[int] = field(default_factory=list)
    """HTTP statuses to answer the next ``GET /v1/batches/{id}`` with, one each (a rotated key, a
    provider hiccup), before answering normally again."""
    create_delay_s: float = 0.0
    """How long ``POST /v1/batches`` takes to answer after the batch exists (a client that times out
    first does not know whether it was created)."""
    clock: Callable[[], float] = time.monotonic
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, _Batch] = field(default_factory=dict)
    submissions: Counter[str] = field(default_factory=Counter)
    uploads: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}/content", self._content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list)
        app.router.add_get("/v1/batches/{batch_id}", self._get)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self._cancel)

    def stats(self) -> dict[str, Any]:
        """Batches made, requests submitted, and how many custom_ids were submitted more than once."""
        return {
            "batches": len(self.batches),
            "uploads": self.uploads,
            "submitted": sum(self.submissions.values()),
            "distinct": len(self.submissions),
            "submitted_twice": sum(1 for n in self.submissions.values() if n > 1),
        }

    # -- handlers ----------------------------------------------------------------------------------

    def _refused(self, request: web.Request) -> web.Response | None:
        key = self.fake.api_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            return _error(401, "No auth credentials found")
        return None

    async def _upload(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "batch" or not isinstance(upload, web.FileField):
            return _error(400, "expected purpose=batch and a file")
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = upload.file.read()
        self.uploads += 1
        return _json({"id": file_id, "object": "file", "purpose": "batch", "bytes": len(self.files[file_id])})

    async def _content(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        content = self.files.get(request.match_info["file_id"])
        if content is None:
            return _error(404, "no such file")
        return web.Response(body=content, content_type="application/octet-stream")

    async def _create(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        body = await request.json()
        content = self.files.get(str(body.get("input_file_id")))
        if content is None:
            return _error(400, "input_file_id: no such file")
        lines = [json.loads(line) for line in content.splitlines() if line.strip()]
        batch = _Batch(
            id=f"batch_{next(self._ids)}",
            input_file_id=str(body["input_file_id"]),
            metadata=dict(body.get("metadata") or {}),
            created_at=self.clock(),
            requests=lines,
        )
        self.batches[batch.id] = batch
        self.submissions.update(str(line.get("custom_id")) for line in lines)
        if self.create_delay_s > 0:
            await asyncio.sleep(self.create_delay_s)
        return _json(self._describe(batch))

    async def _get(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        if self.poll_refusals:
            return _error(self.poll_refusals.pop(0), "refused by the test")
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "no such batch")
        return _json(self._describe(batch))

    async def _list(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        newest_first = list(reversed(self.batches.values()))
        after = request.query.get("after")
        if after is not None:
            ids = [b.id for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = newest_first[:limit]
        return _json(
            {
                "object": "list",
                "data": [self._describe(b) for b in page],
                "has_more": len(newest_first) > limit,
            }
        )

    async def _cancel(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "no such batch")
        batch.cancelled = True
        return _json(self._describe(batch))

    # -- the batch's life --------------------------------------------------------------------------

    def _describe(self, batch: _Batch) -> dict[str, Any]:
        self._advance(batch)
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "metadata": dict(batch.metadata),
            "errors": (
                {
                    "object": "list",
                    "data": [{"code": "invalid_request", "message": "model not found", "line": 1}],
                }
                if batch.status == "failed"
                else None
            ),
            "request_counts": {
                "total": len(batch.requests),
                "completed": batch.completed,
                "failed": batch.failed,
            },
        }

    def _advance(self, batch: _Batch) -> None:
        if batch.status in ("completed", "expired", "cancelled", "failed"):
            return
        if batch.cancelled:
            self._end(batch, "cancelled", answered=0)
            return
        if self.invalid:
            batch.status, batch.failed = "failed", len(batch.requests)
            return
        share = (self.clock() - batch.created_at) / self.delay_s if self.delay_s > 0 else 1.0
        if share < 1 / 3:
            batch.status = "validating"
        elif share < 2 / 3:
            batch.status = "in_progress"
            batch.completed = int(len(batch.requests) * (share - 1 / 3) * 3)
        elif share < 1:
            batch.status = "finalizing"
        else:
            total = len(batch.requests)
            self._end(
                batch,
                "expired" if self.expire else "completed",
                answered=total // 2 if self.expire else total,
            )

    def _end(self, batch: _Batch, status: str, *, answered: int) -> None:
        output, errors = [], []
        for i, line in enumerate(batch.requests):
            custom_id = line.get("custom_id")
            if i >= answered:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                errors.append(
                    {
                        "id": f"req_{i}",
                        "custom_id": custom_id,
                        "response": None,
                        "error": {
                            "code": code,
                            "message": f"This request could not be executed before the batch {status}.",
                        },
                    }
                )
            elif self.fail_every and (i + 1) % self.fail_every == 0:
                errors.append(
                    {
                        "id": f"req_{i}",
                        "custom_id": custom_id,
                        "response": {
                            "status_code": 500,
                            "request_id": f"r{i}",
                            "body": {"error": {"message": "Internal server error", "code": 500}},
                        },
                        "error": None,
                    }
                )
            else:
                output.append(
                    {
                        "id": f"req_{i}",
                        "custom_id": custom_id,
                        "response": {
                            "status_code": 200,
                            "request_id": f"r{i}",
                            "body": self._answer(line.get("body") or {}),
                        },
                        "error": None,
                    }
                )
        batch.completed = len(output)
        batch.failed = len(errors)
        batch.status = status
        if output:
            batch.output_file_id = self._store_file(output)
        if errors:
            batch.error_file_id = self._store_file(errors)

    def _store_file(self, lines: list[dict[str, Any]]) -> str:
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        return file_id

    def _answer(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The chat endpoint's answer to ``body`` (its reply builder and usage; no cost: OpenAI
        reports none, so a client prices batch calls itself)."""
        from tests.fakellm import RecordedRequest, _prompt_of

        max_tokens = body.get("max_tokens")
        record = RecordedRequest(
            number=0,
            at=self.clock(),
            path="/v1/batches",
            headers=CIMultiDict(),
            body=body,
            model=body.get("model") if isinstance(body.get("model"), str) else None,
            prompt=_prompt_of(body),
            max_tokens=int(max_tokens) if isinstance(max_tokens, int) else None,
            temperature=body.get("temperature") if isinstance(body.get("temperature"), int | float) else None,
        )
        answer = self.fake._completion(record, self.fake.reply_builder(record))
        answer["usage"].pop("cost", None)
        answer.pop("provider", None)
        return answer


def _json(body: Mapping[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(body), content_type=_JSON)


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": {"message": message}}), content_type=_JSON)
