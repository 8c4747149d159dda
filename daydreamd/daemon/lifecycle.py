"""``daydreamd``: the process's lifecycle around the :class:`~daydreamd.daemon.service.Service`.

Startup: the umask (0o007 added: nothing is readable by other users) -> settings -> logging -> the
instance lock -> the run state (checked, migrated; temp files a killed process left removed;
rate windows refilled; dead claims recovered) -> one check of
``1_raw`` (changes made while the service was down are applied) -> the control socket -> the
watcher, the rebuild loop, the re-parser and the pool in one task group. SIGTERM/SIGINT stop
claiming, let in-flight calls finish within ``pool.grace_s``, release the rest and exit 0.
SIGHUP reloads limits and stage settings without dropping in-flight calls.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import aiohttp
import anyio
import structlog

from daydreamd import __version__
from daydreamd.core.config import DEFAULT_ENDPOINT, Settings, load_settings
from daydreamd.core.errors import DaydreamError
from daydreamd.daemon.limits import RPM_WINDOW_S
from daydreamd.daemon.lock import instance_lock
from daydreamd.daemon.logconfig import configure_logging
from daydreamd.daemon.runner import Runner
from daydreamd.daemon.sdnotify import Notifier, status_line, status_loop, watchdog_loop
from daydreamd.daemon.server import make_app, start_unix_site, stop
from daydreamd.daemon.service import Service
from daydreamd.daemon.settings import key_scrubber, reloadable
from daydreamd.daemon.watcher import rebuild_loop, spec_relevant, watch_tree
from daydreamd.llm.apikey import KeyScrubber
from daydreamd.llm.offline import MockProvider
from daydreamd.llm.registry import check_settings, endpoint_llm, make_endpoint_provider, needs_session
from daydreamd.sandbox.render_process import RenderProcess
from daydreamd.storage.atomic import remove_stale_temps
from daydreamd.storage.gens import GensStore
from daydreamd.storage.layout import DataLayout
from daydreamd.storage.restart_memory import RestartMemory
from daydreamd.storage.statefile import UnreadableStateError
from daydreamd.storage.store import Store

log = structlog.get_logger("daydreamd")

FIRST_REBUILD_WAIT_S = 0.5
"""How long the socket waits for the startup rebuild: a small cohort is in force when status first
answers; a big one is still being built and synced, and status shows its progress."""


@asynccontextmanager
async def _http_session(settings: Settings) -> AsyncIterator[aiohttp.ClientSession | None]:
    if not any(needs_session(endpoint_llm(e)) for e in settings.all_endpoints().values()):
        yield None
        return
    connector = aiohttp.TCPConnector(limit=max(settings.pool.concurrency, 1), enable_cleanup_closed=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def _sweep_temps(data_dir: Path, running: list[tuple[str, str]]) -> int:
    """Remove half-written temp files a killed process left: in the folders of the generations it
    was running (only those can hold one), the cohort folders and the data folder itself."""
    layout = DataLayout(data_dir)
    folders = [layout.gen_dir(stage, gen_id) for stage, gen_id in running]
    folders += [data_dir, layout.cohorts, *(layout.cohort_dir(c) for c in layout.cohort_ids())]
    return sum(remove_stale_temps(folder) for folder in folders)


async def serve(
    settings: Settings, env: Mapping[str, str], *, scrubber: KeyScrubber, new_state: bool = False
) -> int:
    """Run the service until SIGTERM/SIGINT; return the exit code.

    ``scrubber``: the API key's, which the log uses too; a prompt holding the key is never sent.
    ``new_state``: an unreadable run state is renamed aside and a new one started (else an error).
    """
    config_dir = settings.config_path.parent if settings.config_path else None
    notifier = Notifier.from_env(env)
    state_db = settings.paths.state_db
    # Templates render in child processes that can be killed (time and memory limits).
    with instance_lock(state_db), RenderProcess(settings.render) as renderer:
        async with (
            Store.open(state_db, set_aside_unreadable=new_state) as store,
            _http_session(settings) as session,
        ):
            if (aside := store.set_aside) is not None:
                log.warning(
                    "state_set_aside", state_db=str(state_db), moved_to=str(aside.path), reason=aside.reason
                )
            swept = _sweep_temps(settings.paths.data_dir, await store.running(batches=True))
            recent = await RestartMemory(store).recent_requests(
                RPM_WINDOW_S
            )  # before recover(): dead claims count too
            recovered = await store.recover()
            providers = {
                name: make_endpoint_provider(name, endpoint, env=env, config_dir=config_dir, session=session)
                for name, endpoint in settings.all_endpoints().items()
            }
            runner = Runner(
                store=GensStore(settings.paths.data_dir),
                provider=providers.get(DEFAULT_ENDPOINT) or MockProvider(),  # calls go through the endpoints
                policy=settings.retry,
                rng=random.Random(),
                renderer=renderer,
                scrubber=scrubber,
            )
            service = Service(settings, store, runner, providers=providers)
            await service.pool.restore_limits()
            service.pool.limits.seed(recent)
            await service.restore_pauses()
            log.info(
                "service_starting",
                version=__version__,
                recovered=recovered,
                temp_files_removed=swept,
                pid=os.getpid(),
                data_dir=str(settings.paths.data_dir),
                provider=settings.llm.provider if settings.llm_in_use else None,
                endpoints=sorted(providers),
            )
            site = None
            try:
                async with anyio.create_task_group() as tg:
                    # The first check of 1_raw runs beside the socket: a big cohort takes a while to
                    # build and sync, and status shows its progress meanwhile. A small one is waited for.
                    first = anyio.Event()
                    tg.start_soon(_first_rebuild, service, first)
                    with anyio.move_on_after(FIRST_REBUILD_WAIT_S):
                        await first.wait()
                    site = await start_unix_site(
                        make_app(service, on_error=_log_handler_error), settings.paths.socket
                    )
                    log.info(
                        "service_ready",
                        socket=str(settings.paths.socket),
                        cohort_id=service.current.cohort_id,
                        building=service.current.building is not None,
                    )
                    notifier.ready(status_line(await service.status()))
                    tg.start_soon(_signals, service, env, notifier)
                    tg.start_soon(watchdog_loop, notifier, notifier.watchdog_interval())
                    tg.start_soon(status_loop, notifier, service.status)
                    watch = partial(
                        watch_tree, debounce_ms=settings.watch.debounce_ms, stop=service.stop_watching
                    )
                    tg.start_soon(watch, settings.raw_dir, service.trigger)
                    cohorts = DataLayout(settings.paths.data_dir).cohorts
                    tg.start_soon(partial(watch, relevant=spec_relevant), cohorts, service.trigger)
                    tg.start_soon(rebuild_loop, service.trigger, service.rebuild)
                    tg.start_soon(service.keep_summary_fresh)
                    tg.start_soon(service.keep_parses_current)
                    tg.start_soon(service.batcher.run)
                    await service.pool.run()
                    await service.save_rate_windows()
                    tg.cancel_scope.cancel()
            finally:
                service.bus.close()  # streaming clients end now, not at the server's timeout
                if site is not None:
                    with anyio.CancelScope(shield=True):
                        await stop(site)
            log.info("service_stopped")
    return 0


async def _first_rebuild(service: Service, done: anyio.Event) -> None:
    """The startup check of 1_raw. A failure (a full disk, a folder in the way) does not stop the
    service: it is logged and handed to the rebuild loop, which tries again with backoff."""
    try:
        await service.rebuild("startup")
    except Exception as exc:
        log.error("rebuild_failed", error=f"{type(exc).__name__}: {exc}", reason="startup", exc_info=True)
        service.trigger.fire("retry")
    finally:
        done.set()


async def _signals(service: Service, env: Mapping[str, str], notifier: Notifier) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                _reload(service, env, notifier)
                continue
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            notifier.stopping("stopping: finishing in-flight calls")
            service.stop_watching.set()
            service.pool.stop()
            return


def _reload(service: Service, env: Mapping[str, str], notifier: Notifier) -> None:
    """SIGHUP: new limits and stage settings; paths and the provider stay as they are."""
    notifier.reloading()
    try:
        fresh = load_settings(service.settings.config_path, env)
        check_settings(fresh)
    except DaydreamError as exc:
        log.error("reload_failed", error=str(exc))
        notifier.ready(f"reload failed, previous settings kept: {exc}")
        return
    settings = reloadable(service.settings, fresh)
    service.live.replace(settings)  # the rebuilder, the pool and its retries read these from now on
    service.current.build = None  # stage settings are part of gen_ids: rebuild under the new ones
    service.trigger.fire("reload")
    log.info("config_reloaded", concurrency=settings.pool.concurrency)
    notifier.ready()


def _log_handler_error(exc: BaseException) -> None:
    log.error("control_request_failed", error=repr(exc), exc_info=exc)


UMASK_FLOOR = 0o007
"""Bits always masked: nothing the service creates (run state, log, prompts, replies) is readable or
writable by other users. Under systemd the unit's ``UMask=0027`` is stricter and stays as it is."""


def tighten_umask(floor: int = UMASK_FLOOR) -> int:
    """Add ``floor`` to the process's umask, never removing a bit (an inherited stricter umask, e.g.
    systemd's 0027, is kept); return the umask now in force. Called first thing, before any thread."""
    umask = os.umask(0) | floor
    os.umask(umask)
    return umask


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``daydreamd --config PATH``."""
    tighten_umask()
    parser = argparse.ArgumentParser(
        prog="daydreamd",
        description="Run the daydreamd service in the foreground: watch data/1_raw, keep the cohort current, "
        "and run approved generations. Control it with daydreamctl.",
    )
    parser.add_argument("--config", "-c", type=Path, help="config file (default: ./config.toml if present)")
    parser.add_argument("--data", type=Path, help="directory containing 1_raw/ (overrides paths.data_dir)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--new-state",
        action="store_true",
        help="if the run state file is unreadable (empty or damaged), rename it to "
        "<name>.unreadable-<time> and start a new, empty one; a readable state is used as it is",
    )
    parser.add_argument("--version", action="version", version=f"daydreamd {__version__}")
    args = parser.parse_args(argv)
    config = args.config or (Path("config.toml") if Path("config.toml").is_file() else None)
    logging_on = False
    try:
        settings = load_settings(config.resolve() if config else None, os.environ, data_dir=args.data)
        check_settings(settings)
        scrubber = key_scrubber(settings, os.environ)  # the log scrubs the key too; a bad .env stops here
        configure_logging(log_file=settings.paths.log_file, level=args.log_level, scrubber=scrubber)
        logging_on = True
        code = anyio.run(
            partial(serve, settings, dict(os.environ), scrubber=scrubber, new_state=args.new_state)
        )
    except (DaydreamError, BaseExceptionGroup) as raised:
        exc = _daydream_error(raised)
        if exc is None:
            raise
        message = _unreadable_state(exc) if isinstance(exc, UnreadableStateError) else str(exc)
        if logging_on:
            log.error("startup_failed", error=message)
        print(f"daydreamd: {message}", file=sys.stderr)
        code = 2
    sys.exit(code)


def _daydream_error(raised: BaseException) -> DaydreamError | None:
    """The error to report: ``raised`` itself, or the one inside a task group's exception group
    (the socket is bound inside the service's task group, so a refused socket path comes wrapped).
    None when anything else is in the group: that is a bug, and its traceback is wanted."""
    if isinstance(raised, DaydreamError):
        return raised
    if isinstance(raised, BaseExceptionGroup):
        ours, others = raised.split(DaydreamError)
        if ours is not None and others is None:
            return _daydream_error(ours.exceptions[0])
    return None


def _unreadable_state(exc: UnreadableStateError) -> str:
    """What is wrong with the run state and the ways out, in one message."""
    return (
        f"{exc}. Nothing was changed. Restore it from a backup, or start a new, empty run state: "
        "move the file away, or start once with --new-state "
        f"(it renames the file to {exc.path.name}.unreadable-<time>). With a new state, approve the work "
        "again: the files under data/ are kept and saved replies are reused, not paid for twice."
    )


if __name__ == "__main__":
    main()
