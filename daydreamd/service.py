"""``daydreamd``: the service's composition root, its lifecycle and its control surface.

Startup: settings -> logging -> the instance lock -> the run state (migrated; dead claims
recovered) -> one check of ``1_raw`` (changes made while the service was down are applied)
-> the control socket -> the watcher, the rebuild loop and the pool in one task group.
SIGTERM/SIGINT stop claiming, let in-flight calls finish within ``pool.grace_s``, release the
rest and exit 0. SIGHUP reloads limits and stage settings without dropping in-flight calls.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import structlog

from daydreamd import __version__
from daydreamd.config import Settings, load_settings, retry_policy
from daydreamd.control import ApprovalRequest, ControlError
from daydreamd.errors import DaydreamError
from daydreamd.gens import GensStore
from daydreamd.logconfig import configure_logging
from daydreamd.pool import Pool
from daydreamd.providers import make_provider, needs_session
from daydreamd.rebuild import Current, Rebuilder
from daydreamd.runner import Runner
from daydreamd.server import make_app, start_unix_site, stop
from daydreamd.store import Store, now_iso
from daydreamd.watcher import Trigger, rebuild_loop, watch_tree

log = structlog.get_logger("daydreamd")


class AlreadyRunningError(DaydreamError):
    """Another daydreamd holds the lock on this run state."""


@contextmanager
def instance_lock(state_db: Path) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``<state_db>.lock`` for the life of the service.

    Taken before the socket is bound: binding silently replaces an existing socket file, so
    without the lock a second instance would steal the socket from a live one.
    """
    path = state_db.with_name(state_db.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise AlreadyRunningError(
                f"another daydreamd (pid {holder}) is already running on {state_db}; stop it first "
                f"(lock file {path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


class Service:
    """The running service: owns the components and answers the control socket."""

    def __init__(self, settings: Settings, store: Store, runner: Runner) -> None:
        self.settings = settings
        self.store = store
        self.current = Current()
        self.rebuilder = Rebuilder(settings, store, self.current)
        self.pool = Pool(settings=settings, store=store, runner=runner, current=self.current)
        self.trigger = Trigger()
        self.stop_watching = anyio.Event()
        self.started = time.monotonic()
        self.started_at = now_iso()

    async def rebuild(self, reason: str) -> None:
        """Apply the files if they changed, then let the pool look for work."""
        await self.rebuilder.check(reason=reason)
        self.pool.wake()

    # -- the Control protocol ------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """What ``GET /v1/status`` answers."""
        pool = self.pool.snapshot()
        return {
            "version": __version__,
            "started_at": self.started_at,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "cohort_id": self.current.cohort_id,
            "stages": await self.store.counts(),
            "in_flight": pool["in_flight"],
            "models": pool["models"],
            "pool": {k: pool[k] for k in ("concurrency", "paused", "parked", "outcomes")},
            "recent_errors": await self.store.recent_errors(),
            "errors": self.current.errors(),
            "last_rebuild": self.current.last,
            "rebuilds": self.current.rebuilds,
        }

    async def generations(self, *, stage: str | None, state: str | None, limit: int) -> list[dict[str, Any]]:
        """What ``GET /v1/generations`` answers."""
        return await self.store.generations(stage=stage, state=state, limit=limit)

    async def generation(self, gen_id: str) -> dict[str, Any] | None:
        """What ``GET /v1/generations/{gen_id}`` answers."""
        return await self.store.generation(gen_id)

    async def approve(self, request: ApprovalRequest) -> dict[str, Any]:
        """Queue matching pending generations of the current cohort."""
        self._check_known(request)
        approval_id, matched = await self.store.approve(
            stage=request.stage,
            template_id=request.template_id,
            llm_model_id=request.llm_model_id,
            limit=request.limit,
            requested_by=request.requested_by,
            cohort_id=self.current.cohort_id,
        )
        log.info("approved", approval_id=approval_id, matched=matched, **_scope(request))
        self.pool.wake()
        return {"approval_id": approval_id, "matched": matched, "cohort_id": self.current.cohort_id}

    async def revoke(self, request: ApprovalRequest) -> dict[str, Any]:
        """Send queued, not yet started generations back to pending."""
        self._check_known(request)
        revoked = await self.store.revoke(
            stage=request.stage,
            template_id=request.template_id,
            llm_model_id=request.llm_model_id,
            requested_by=request.requested_by,
        )
        log.info("revoked", revoked=revoked, **_scope(request))
        return {"revoked": revoked}

    def _check_known(self, request: ApprovalRequest) -> None:
        """A filter naming an unknown template or model is a mistake, not an empty match."""
        build = self.current.build
        if build is None:
            raise ControlError(409, "conflict", "there is no cohort yet: fix the errors in data/1_raw first")
        experiment = build.experiment
        if request.template_id and not any(
            t.template_id == request.template_id and str(t.stage) == request.stage
            for t in experiment.templates
        ):
            raise ControlError(404, "not_found", f"no {request.stage} template {request.template_id!r}")
        if request.llm_model_id and experiment.model(request.llm_model_id) is None:
            raise ControlError(404, "not_found", f"no model {request.llm_model_id!r} in llm_models.csv")


def _scope(request: ApprovalRequest) -> dict[str, Any]:
    return {
        "stage": request.stage,
        "template_id": request.template_id,
        "model": request.llm_model_id,
        "limit": request.limit,
        "requested_by": request.requested_by,
    }


@asynccontextmanager
async def _http_session(settings: Settings) -> AsyncIterator[aiohttp.ClientSession | None]:
    if not needs_session(settings.llm):
        yield None
        return
    connector = aiohttp.TCPConnector(limit=max(settings.pool.concurrency, 1), enable_cleanup_closed=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def serve(settings: Settings, env: Mapping[str, str]) -> int:
    """Run the service until SIGTERM/SIGINT; return the exit code."""
    config_dir = settings.config_path.parent if settings.config_path else None
    with instance_lock(settings.paths.state_db):
        async with Store.open(settings.paths.state_db) as store, _http_session(settings) as session:
            recovered = await store.recover()
            provider = make_provider(settings.llm, env=env, config_dir=config_dir, session=session)
            runner = Runner(
                store=GensStore(settings.paths.data_dir),
                provider=provider,
                policy=retry_policy(settings.retry),
                rng=random.Random(),
            )
            service = Service(settings, store, runner)
            await service.pool.restore_limits()
            log.info(
                "service_starting",
                version=__version__,
                recovered=recovered,
                pid=os.getpid(),
                data_dir=str(settings.paths.data_dir),
                provider=settings.llm.provider,
            )
            await service.rebuild("startup")
            site = await start_unix_site(
                make_app(service, on_error=_log_handler_error), settings.paths.socket
            )
            log.info("service_ready", socket=str(settings.paths.socket), cohort_id=service.current.cohort_id)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_signals, service, env)
                    watch = partial(
                        watch_tree, debounce_ms=settings.watch.debounce_ms, stop=service.stop_watching
                    )
                    tg.start_soon(watch, settings.raw_dir, service.trigger)
                    tg.start_soon(rebuild_loop, service.trigger, service.rebuild)
                    await service.pool.run()
                    tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await stop(site)
            log.info("service_stopped")
    return 0


async def _signals(service: Service, env: Mapping[str, str]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                _reload(service, env)
                continue
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            service.stop_watching.set()
            service.pool.stop()
            return


def _reload(service: Service, env: Mapping[str, str]) -> None:
    """SIGHUP: new limits and stage settings; paths and the provider stay as they are."""
    try:
        fresh = load_settings(service.settings.config_path, env)
    except DaydreamError as exc:
        log.error("reload_failed", error=str(exc))
        return
    settings = replace(
        service.settings,
        experiment=fresh.experiment,
        stages=fresh.stages,
        watch=fresh.watch,
        retry=fresh.retry,
        pool=fresh.pool,
    )
    service.settings = settings
    service.rebuilder.settings = settings
    service.pool.update_settings(settings)
    service.pool.runner.policy = retry_policy(settings.retry)
    service.current.build = None  # stage settings are part of gen_ids: rebuild under the new ones
    service.trigger.fire("reload")
    log.info("config_reloaded", concurrency=settings.pool.concurrency)


def _log_handler_error(exc: BaseException) -> None:
    log.error("control_request_failed", error=repr(exc), exc_info=exc)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``daydreamd --config PATH``."""
    parser = argparse.ArgumentParser(
        prog="daydreamd",
        description="Run the daydreamd service in the foreground: watch data/1_raw, keep the cohort current, "
        "and run approved generations. Control it with daydreamctl.",
    )
    parser.add_argument("--config", "-c", type=Path, help="config file (default: ./config.toml if present)")
    parser.add_argument("--data", type=Path, help="directory containing 1_raw/ (overrides paths.data_dir)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"daydreamd {__version__}")
    args = parser.parse_args(argv)
    config = args.config or (Path("config.toml") if Path("config.toml").is_file() else None)
    try:
        settings = load_settings(config.resolve() if config else None, os.environ, data_dir=args.data)
        configure_logging(log_file=settings.paths.log_file, level=args.log_level)
        code = anyio.run(serve, settings, dict(os.environ))
    except DaydreamError as exc:
        print(f"daydreamd: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
