"""Settings from ``config.toml`` and the environment, built once and passed down (pure-ish).

Only this module reads configuration; everything else receives a ``Settings``. Unknown keys and
wrong types are errors that name the file and the dotted key, because a misspelt key silently
falling back to a default is how experiments end up with the wrong parameters. Relative paths
resolve against the config file's folder, so the service behaves the same from any cwd.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args, get_type_hints

from daydreamd.core.errors import ConfigError
from daydreamd.core.experiment import DESCRIPTION_LEVELS
from daydreamd.core.ids import cohort_id_problem
from daydreamd.core.retry import RetryPolicy
from daydreamd.core.stages import STAGES, Stage
from daydreamd.core.templates import RenderLimits

UNSET_WORDS = frozenset({"", "0", "false", "none", "null"})
TRUNCATION_POLICIES = ("fail", "accept")


@dataclass(frozen=True, slots=True, kw_only=True)
class PathSettings:
    """Where things live; relative values resolve against the config file's folder."""

    data_dir: Path = Path("data")
    """Holds ``1_raw/`` (the experiment), ``cohorts/``, ``gens/`` and ``combo_mappings.csv``."""
    state_db: Path = Path("state/daydreamd.sqlite")
    """The SQLite run state of the service."""
    socket: Path = Path("run/daydreamd.sock")
    """The Unix socket the service listens on and ``daydreamctl`` talks to."""
    log_file: Path | None = None
    """Optional JSON-lines log file, in addition to stdout."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentSettings:
    """What shapes the cohort beyond the files in ``1_raw``."""

    k_max: int = 2
    """Concepts per combo (capped at the number of active concepts)."""
    description_level: str = "paragraph"
    """Which concept description drafts get: sentence, paragraph or article (with fallback)."""
    cohort: str | None = None
    """An explicit cohort id instead of the content hash (``DD_COHORT`` overrides this)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StageSettings:
    """Per-stage call parameters and reply checks (``[stages.<stage>]``)."""

    max_tokens: int = 8192
    """The completion budget sent with each call; part of every gen_id of the stage."""
    temperature: float | None = 0.7
    """Sampling temperature sent with each call (omit the key to use 0.7); part of the gen_id."""
    min_lines: int = 0
    """Replies with fewer non-empty lines fail as ``too_short`` (drafts default to 3)."""
    on_truncation: str = "accept"
    """``fail`` or ``accept`` a reply cut off at max_tokens (drafts default to ``fail``)."""
    batch: bool = False
    """Approvals of this stage run in batch mode unless they say ``--online`` (models that no
    endpoint with ``batch = true`` serves run online)."""

    def call_parameters(self) -> dict[str, Any]:
        """The parameters sent to the model, which therefore determine the generation."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature}


STAGE_DEFAULTS: dict[Stage, StageSettings] = {
    Stage.DRAFT: StageSettings(max_tokens=16384, min_lines=3, on_truncation="fail"),
    Stage.ESSAY: StageSettings(max_tokens=16384),
    Stage.EVALUATION: StageSettings(max_tokens=8192),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmSettings:
    """How to reach the model API (``[llm]``)."""

    provider: str = "openrouter"
    """openrouter | openai | mock (offline, deterministic replies) | echo (returns the prompt)."""
    base_url: str = "https://openrouter.ai/api/v1"
    """Any OpenAI-compatible endpoint (OpenRouter, OpenAI, vLLM, Ollama, llama.cpp)."""
    api_key_env: str = "OPENROUTER_API_KEY"
    """The API key's name: a systemd credential of that name, else this environment variable, else
    a ``.env`` next to the config (refused when group or others may read it)."""
    timeout_s: float = 600.0
    """Per-request timeout in seconds."""


DEFAULT_ENDPOINT = "llm"
"""The name of the endpoint ``[llm]`` describes: every model without ``[models.<id>] endpoints``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSettings:
    """One server (or API key) that answers calls: ``[endpoints.<name>]``, or ``[llm]`` as ``llm``.

    The limits are the endpoint's own, on top of each model's and provider's: a provider limits
    requests and tokens per API key, and one inference server takes only so many calls at once.
    """

    kind: str = "openai"
    """openrouter (OpenRouter's headers and usage accounting) | openai (any OpenAI-compatible
    server: OpenAI, vLLM, Ollama, llama.cpp) | mock | echo (offline)."""
    base_url: str = ""
    api_key_env: str = ""
    """The API key's name (a systemd credential, an environment variable or a ``.env`` line, as
    for ``[llm]``); empty: send no key (a local server)."""
    timeout_s: float = 600.0
    headers: tuple[tuple[str, str], ...] = ()
    """Extra HTTP headers sent with every request (``headers = { "X-Team" = "lab" }``)."""
    requests_per_minute: int = 0
    """Requests in any sliding 60 s window over every model it serves (0: unlimited)."""
    tokens_per_minute: int = 0
    """Tokens in any sliding 60 s window (0: unlimited): a call counts its prompt (about four
    characters a token) plus ``max_tokens`` when sent, corrected by the usage its reply reports."""
    concurrency: int = 0
    """Calls in flight at once (0: unlimited; the pool's and the models' limits still apply)."""
    batch: bool = False
    """The server speaks OpenAI's Batch API (``/files``, ``/batches``): work approved in batch mode
    for the models it serves is sent there as batches."""
    batch_discount: float = 0.5
    """A batch call's price as a share of the online price (used when the reply reports no cost)."""

    @classmethod
    def of_llm(cls, llm: LlmSettings) -> EndpointSettings:
        """The endpoint ``[llm]`` describes (no limits of its own, as before endpoints existed)."""
        return cls(
            kind=llm.provider, base_url=llm.base_url, api_key_env=llm.api_key_env, timeout_s=llm.timeout_s
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchSettings:
    """How the service follows edits to ``1_raw`` (``[watch]``)."""

    debounce_ms: int = 200
    """Changes within this many milliseconds are applied as one rebuild."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitOverrides:
    """What ``[pool.models.<id>]`` or ``[pool.providers.<id>]`` sets; None falls back to the pool default."""

    concurrency: int | None = None
    """Calls in flight at once (unset: the pool default)."""
    requests_per_minute: int | None = None
    """Requests in any sliding 60 s window (unset: the pool default; 0: unlimited)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The limits that apply to one model: its overrides with the pool defaults filled in."""

    concurrency: int
    """Calls in flight at once (the ceiling of its adaptive limit)."""
    requests_per_minute: int
    """Requests in any sliding 60 s window (0: unlimited)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSettings:
    """The worker pool (``[pool]``)."""

    concurrency: int = 16
    """Generations in progress at once, over all models."""
    model_concurrency: int = 8
    """Default calls in flight per model (adapted down on 429s, up again on success)."""
    requests_per_minute: int = 60
    """Default requests per model in any sliding 60 s window (0: unlimited)."""
    provider_requests_per_minute: int = 0
    """Default requests per provider (llm_models.csv ``provider``) per 60 s window (0: unlimited)."""
    lease_s: float = 3600.0
    """How long a claim is valid; expired leases go back to the queue."""
    grace_s: float = 30.0
    """On SIGTERM, how long in-flight calls may finish before they are released."""
    quota_park_s: float = 900.0
    """After a quota failure (402), how long that provider's work waits before it is tried again."""
    outage_failures: int = 3
    """Outage failures in a row (no answer, or 5xx) after which the provider counts as down."""
    outage_probe_s: float = 5.0
    """While the provider is down, the first wait before one probe call (doubling after each failed probe)."""
    outage_probe_cap_s: float = 120.0
    """The longest wait between probes."""
    outage_requeues: int = 20
    """How often one generation may go back to the queue because its calls failed during an outage."""
    models: tuple[tuple[str, LimitOverrides], ...] = ()
    """Per-model overrides, ``[pool.models.<llm_model_id>]``."""
    providers: tuple[tuple[str, LimitOverrides], ...] = ()
    """Per-provider overrides, ``[pool.providers.<provider>]``."""

    def model_limits(self, model_id: str) -> Limits:
        """The model's limits with the pool defaults filled in."""
        own = dict(self.models).get(model_id, LimitOverrides())
        return Limits(
            concurrency=own.concurrency if own.concurrency is not None else self.model_concurrency,
            requests_per_minute=(
                own.requests_per_minute if own.requests_per_minute is not None else self.requests_per_minute
            ),
        )

    def provider_rpm(self, provider: str) -> int:
        """Requests per minute for a provider (0: unlimited)."""
        own = dict(self.providers).get(provider, LimitOverrides()).requests_per_minute
        return own if own is not None else self.provider_requests_per_minute

    def with_limits(self, model_id: str | None, concurrency: int | None, rpm: int | None) -> PoolSettings:
        """These settings with a changed limit: the pool's concurrency (``model_id`` None) or a model's.

        None leaves a value as it is; ``rpm`` applies to a model only.
        """
        if model_id is None:
            return self if concurrency is None else replace(self, concurrency=concurrency)
        own = dict(self.models).get(model_id, LimitOverrides())
        own = replace(
            own,
            concurrency=concurrency if concurrency is not None else own.concurrency,
            requests_per_minute=rpm if rpm is not None else own.requests_per_minute,
        )
        return replace(self, models=tuple(sorted({**dict(self.models), model_id: own}.items())))


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSettings:
    """How batch mode gathers, submits and follows batches (``[batch]``)."""

    gather_s: float = 60.0
    """A model's ready batch work is submitted once its amount has not grown for this long (or it
    fills a batch): work that becomes ready meanwhile (children of finishing parents) joins it."""
    max_requests: int = 10_000
    """Generations in one batch at most (OpenAI takes up to 50,000)."""
    max_mb: int = 190
    """The largest request file in megabytes (OpenAI takes up to 200 MB); the requests that do not
    fit wait for the next batch."""
    poll_s: float = 60.0
    """How often a submitted batch's progress is asked for."""
    completion_window: str = "24h"
    """Sent with each batch: how long the provider may take (OpenAI offers ``24h``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceSettings:
    """``[prices.<llm_model_id>]``: dollars per million tokens, when llm_models.csv has no price columns."""

    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every setting, resolved: the only thing components receive."""

    config_path: Path | None = None
    paths: PathSettings = field(default_factory=PathSettings)
    experiment: ExperimentSettings = field(default_factory=ExperimentSettings)
    llm: LlmSettings = field(default_factory=LlmSettings)
    stages: tuple[tuple[Stage, StageSettings], ...] = tuple(STAGE_DEFAULTS.items())
    watch: WatchSettings = field(default_factory=WatchSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """``[retry]``: attempts and backoff per failure kind (see ``retry.RetryPolicy``)."""
    pool: PoolSettings = field(default_factory=PoolSettings)
    prices: tuple[tuple[str, PriceSettings], ...] = ()
    render: RenderLimits = field(default_factory=RenderLimits)
    """``[render]``: time, size and memory a template's render may use (see ``templates.RenderLimits``)."""
    endpoints: tuple[tuple[str, EndpointSettings], ...] = ()
    """``[endpoints.<name>]``, sorted by name (``[llm]`` is the endpoint named ``llm``)."""
    routes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """``[models.<llm_model_id>] endpoints = [...]``: the endpoints that serve a model."""
    llm_in_use: bool = True
    """Whether ``[llm]`` is an endpoint: the config has an ``[llm]`` section or no ``[endpoints]``."""
    batch: BatchSettings = field(default_factory=BatchSettings)
    """``[batch]``: gathering, size and polling of batches."""
    batch_models: tuple[str, ...] = ()
    """``[models.<llm_model_id>] batch = true``: models whose approvals run in batch mode by default."""

    def stage(self, stage: Stage) -> StageSettings:
        """The settings of one stage."""
        return dict(self.stages)[stage]

    @property
    def raw_dir(self) -> Path:
        """The experiment directory, ``<data_dir>/1_raw``."""
        return self.paths.data_dir / "1_raw"

    def all_endpoints(self) -> dict[str, EndpointSettings]:
        """Every endpoint by name: ``llm`` (from ``[llm]``, when in use) and ``[endpoints.<name>]``."""
        found = {DEFAULT_ENDPOINT: EndpointSettings.of_llm(self.llm)} if self.llm_in_use else {}
        return {**found, **dict(self.endpoints)}

    def endpoints_of(self, llm_model_id: str) -> tuple[str, ...]:
        """The endpoints that serve a model: its route, else ``llm`` (none without ``[llm]``)."""
        routed = dict(self.routes).get(llm_model_id)
        if routed is not None:
            return routed
        return (DEFAULT_ENDPOINT,) if self.llm_in_use else ()

    def batch_endpoints_of(self, llm_model_id: str) -> tuple[str, ...]:
        """The endpoints serving a model that take batches (``batch = true``)."""
        known = self.all_endpoints()
        return tuple(name for name in self.endpoints_of(llm_model_id) if known[name].batch)

    def runs_in_batch(self, stage: Stage, llm_model_id: str, requested: bool | None) -> bool:
        """Whether approved work of ``stage`` on a model runs in batch mode: as the approval asks
        (``requested``), else as the stage's or the model's ``batch`` says; never on a model that
        no batch endpoint serves."""
        wanted = requested
        if wanted is None:
            wanted = self.stage(stage).batch or llm_model_id in self.batch_models
        return wanted and bool(self.batch_endpoints_of(llm_model_id))


def load_settings(config: Path | None, env: Mapping[str, str], *, data_dir: Path | None = None) -> Settings:
    """Read ``config`` (None: defaults relative to the cwd), apply ``DD_COHORT`` and ``data_dir``."""
    base = config.parent if config else Path.cwd()
    table = _read_toml(config) if config else {}
    source = str(config) if config else "defaults"
    known = {
        "paths",
        "experiment",
        "llm",
        "stages",
        "watch",
        "retry",
        "pool",
        "prices",
        "render",
        "endpoints",
        "models",
        "batch",
    }
    _reject_unknown(table, known, source, "")
    settings = Settings(
        config_path=config,
        paths=_resolve_paths(_section(PathSettings, table, "paths", source), base),
        experiment=_section(ExperimentSettings, table, "experiment", source),
        llm=_section(LlmSettings, table, "llm", source),
        stages=_stages(table.get("stages", {}), source),
        watch=_section(WatchSettings, table, "watch", source),
        retry=_section(RetryPolicy, table, "retry", source),
        pool=_pool(table.get("pool", {}), source),
        prices=_per_id(table.get("prices", {}), PriceSettings, source, "prices"),
        render=_section(RenderLimits, table, "render", source),
        endpoints=_endpoints(table.get("endpoints", {}), source),
        routes=_routes(table.get("models", {}), source),
        llm_in_use="llm" in table or "endpoints" not in table,
        batch=_section(BatchSettings, table, "batch", source),
        batch_models=_batch_models(table.get("models", {}), source),
    )
    _check_values(settings, source)
    _check_routes(settings, source)
    if data_dir is not None:
        settings = replace(settings, paths=replace(settings.paths, data_dir=data_dir.resolve()))
    override = env.get("DD_COHORT")
    if override is not None:
        cohort = None if override.strip().lower() in UNSET_WORDS else override.strip()
        if cohort is not None and (problem := cohort_id_problem(cohort)):  # it names a folder under data/
            raise ConfigError(problem, path="environment", key="DD_COHORT")
        settings = replace(settings, experiment=replace(settings.experiment, cohort=cohort))
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            "config file not found; pass --config PATH to an existing file", path=str(path)
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", path=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(path)) from exc


def _reject_unknown(table: Mapping[str, Any], known: set[str], source: str, prefix: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(
                f"unknown key; expected one of {', '.join(sorted(known))}", path=source, key=prefix + key
            )


def _section(cls: type[Any], table: Mapping[str, Any], name: str, source: str) -> Any:
    values = table.get(name, {})
    if not isinstance(values, dict):
        raise ConfigError("must be a table", path=source, key=name)
    return _build(cls, values, source, f"{name}.")


def _build(cls: type[Any], values: Mapping[str, Any], source: str, prefix: str, base: Any = None) -> Any:
    """``base`` (or the class defaults) with ``values`` applied, each checked against its field's type."""
    hints = get_type_hints(cls)
    _reject_unknown(values, set(hints), source, prefix)
    checked = {key: _coerce(hints[key], value, source, prefix + key) for key, value in values.items()}
    return replace(base if base is not None else cls(), **checked)


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    """Accept ``value`` when it fits the field's type: ints for floats, strings for paths."""
    accepted = set(get_args(hint)) or {hint}
    if Path in accepted and isinstance(value, str) and value:
        return Path(value)
    if float in accepted and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if int in accepted and isinstance(value, int) and not isinstance(value, bool):
        return value
    if str in accepted and isinstance(value, str):
        return value
    if bool in accepted and isinstance(value, bool):
        return value
    if bool in accepted:
        raise ConfigError(f"expected true or false, got {value!r}", path=source, key=key)
    names = " or ".join(sorted(t.__name__ for t in accepted if t is not type(None)))
    raise ConfigError(f"expected a {names}, got {value!r}", path=source, key=key)


def _resolve_paths(paths: PathSettings, base: Path) -> PathSettings:
    def resolve(path: Path) -> Path:
        return (base / path.expanduser()).resolve()

    return PathSettings(
        data_dir=resolve(paths.data_dir),
        state_db=resolve(paths.state_db),
        # Its folder is resolved, its own name is not followed: a symbolic link there is refused by
        # the server (daemon/server.py), never resolved to a socket elsewhere that would be replaced.
        socket=resolve(paths.socket.parent) / paths.socket.name,
        log_file=None if paths.log_file is None else resolve(paths.log_file),
    )


def _stages(table: Any, source: str) -> tuple[tuple[Stage, StageSettings], ...]:
    if not isinstance(table, dict):
        raise ConfigError("must be a table of [stages.<stage>] tables", path=source, key="stages")
    _reject_unknown(table, {str(s) for s in STAGES}, source, "stages.")
    return tuple(
        (
            stage,
            _build(
                StageSettings, table.get(str(stage), {}), source, f"stages.{stage}.", STAGE_DEFAULTS[stage]
            ),
        )
        for stage in STAGES
    )


def _pool(table: Any, source: str) -> PoolSettings:
    """``[pool]`` with its ``models`` and ``providers`` sub-tables of per-id limits."""
    if not isinstance(table, dict):
        raise ConfigError("must be a table", path=source, key="pool")
    flat = {k: v for k, v in table.items() if k not in ("models", "providers")}
    pool = _build(PoolSettings, flat, source, "pool.")
    overrides = {
        name: _per_id(table.get(name, {}), LimitOverrides, source, f"pool.{name}")
        for name in ("models", "providers")
    }
    with_overrides: PoolSettings = replace(pool, **overrides)  # _build returns Any
    return with_overrides


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An HTTP header name (RFC 9110 token)."""
_HEADER_BREAK = re.compile(r"[\r\n\x00]")


def _endpoints(table: Any, source: str) -> tuple[tuple[str, EndpointSettings], ...]:
    """``[endpoints.<name>]`` tables; ``headers`` is a table of strings."""
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ConfigError("must hold [endpoints.<name>] tables", path=source, key="endpoints")
    found = []
    for name, values in sorted(table.items()):
        key = f"endpoints.{name}"
        if name == DEFAULT_ENDPOINT:
            raise ConfigError(
                f"the name {DEFAULT_ENDPOINT!r} is the [llm] section's; pick another name",
                path=source,
                key=key,
            )
        headers = values.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(v, str) and _HEADER_NAME.fullmatch(k) and not _HEADER_BREAK.search(v)
            for k, v in headers.items()
        ):
            raise ConfigError(
                'must be a table of header names and one-line strings: headers = { "X-Name" = "value" }',
                path=source,
                key=f"{key}.headers",
            )
        rest = {k: v for k, v in values.items() if k != "headers"}
        endpoint = _build(EndpointSettings, rest, source, f"{key}.")
        if not endpoint.base_url and endpoint.kind in ("openai", "openrouter"):
            raise ConfigError(
                "must be set: the server's URL, e.g. http://localhost:8000/v1",
                path=source,
                key=f"{key}.base_url",
            )
        if endpoint.timeout_s <= 0:
            raise ConfigError("must be more than 0 seconds", path=source, key=f"{key}.timeout_s")
        for limit in ("requests_per_minute", "tokens_per_minute", "concurrency"):
            if getattr(endpoint, limit) < 0:
                raise ConfigError("must be 0 (unlimited) or more", path=source, key=f"{key}.{limit}")
        if endpoint.batch and endpoint.kind != "openai":
            raise ConfigError(
                'takes kind = "openai" only (the Batch API is OpenAI\'s; OpenRouter and the offline '
                "kinds have none)",
                path=source,
                key=f"{key}.batch",
            )
        if not 0 < endpoint.batch_discount <= 1:
            raise ConfigError("must be more than 0 and at most 1", path=source, key=f"{key}.batch_discount")
        found.append((name, replace(endpoint, headers=tuple(sorted(headers.items())))))
    return tuple(found)


def _routes(table: Any, source: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``[models.<llm_model_id>] endpoints = ["name", ...]``."""
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ConfigError("must hold [models.<llm_model_id>] tables", path=source, key="models")
    found = []
    for model_id, values in sorted(table.items()):
        _reject_unknown(values, {"endpoints", "batch"}, source, f"models.{model_id}.")
        if "endpoints" not in values:
            continue
        names = values.get("endpoints")
        key = f"models.{model_id}.endpoints"
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(
                'must be a list of endpoint names, e.g. endpoints = ["vllm-a", "vllm-b"]',
                path=source,
                key=key,
            )
        if len(set(names)) != len(names):
            raise ConfigError("names an endpoint twice", path=source, key=key)
        found.append((model_id, tuple(names)))
    return tuple(found)


def _batch_models(table: Any, source: str) -> tuple[str, ...]:
    """``[models.<llm_model_id>] batch = true``."""
    found = []
    for model_id, values in sorted(table.items()):
        flag = values.get("batch", False)
        if not isinstance(flag, bool):
            raise ConfigError("must be true or false", path=source, key=f"models.{model_id}.batch")
        if flag:
            found.append(model_id)
    return tuple(found)


def _check_routes(settings: Settings, source: str) -> None:
    known = settings.all_endpoints()
    for model_id, names in settings.routes:
        for name in names:
            if name not in known:
                hint = ", ".join(sorted(known)) or "none"
                raise ConfigError(
                    f"no endpoint named {name!r} (known: {hint})",
                    path=source,
                    key=f"models.{model_id}.endpoints",
                )
    for model_id in settings.batch_models:
        if not settings.batch_endpoints_of(model_id):
            raise ConfigError(
                "no endpoint serving this model takes batches: set batch = true in its endpoint's "
                "[endpoints.<name>] table (a server that speaks the Batch API), or remove batch",
                path=source,
                key=f"models.{model_id}.batch",
            )


def _per_id(table: Any, cls: type[Any], source: str, name: str) -> tuple[tuple[str, Any], ...]:
    """A table of ``[<name>.<id>]`` sub-tables, each checked against ``cls``."""
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ConfigError(f"must hold [{name}.<id>] tables", path=source, key=name)
    return tuple((key, _build(cls, value, source, f"{name}.{key}.")) for key, value in sorted(table.items()))


def _check_values(settings: Settings, source: str) -> None:
    experiment = settings.experiment
    if experiment.k_max < 1:
        raise ConfigError("must be at least 1", path=source, key="experiment.k_max")
    if experiment.description_level not in DESCRIPTION_LEVELS:
        levels = ", ".join(DESCRIPTION_LEVELS)
        raise ConfigError(f"must be one of {levels}", path=source, key="experiment.description_level")
    if experiment.cohort is not None and (problem := cohort_id_problem(experiment.cohort)):
        raise ConfigError(problem, path=source, key="experiment.cohort")  # it names a folder under data/
    for key, value in (
        ("pool.concurrency", settings.pool.concurrency),
        ("pool.model_concurrency", settings.pool.model_concurrency),
        ("pool.outage_failures", settings.pool.outage_failures),
        ("retry.rate_limit_tries", settings.retry.rate_limit_tries),
        ("retry.transient_tries", settings.retry.transient_tries),
    ):
        if value < 1:
            raise ConfigError("must be at least 1", path=source, key=key)
    _check_render(settings.render, source)
    _check_batch(settings.batch, source)
    for stage, stage_settings in settings.stages:
        if stage_settings.max_tokens < 1:
            raise ConfigError("must be at least 1", path=source, key=f"stages.{stage}.max_tokens")
        if stage_settings.on_truncation not in TRUNCATION_POLICIES:
            raise ConfigError("must be fail or accept", path=source, key=f"stages.{stage}.on_truncation")


def _check_batch(batch: BatchSettings, source: str) -> None:
    if not 1 <= batch.max_requests <= 50_000:
        raise ConfigError("must be between 1 and 50000", path=source, key="batch.max_requests")
    if not 1 <= batch.max_mb <= 200:
        raise ConfigError("must be between 1 and 200 (megabytes)", path=source, key="batch.max_mb")
    for key in ("gather_s", "poll_s"):
        if not 0 < getattr(batch, key) <= 86_400:
            raise ConfigError(
                "must be more than 0 and at most 86400 seconds", path=source, key=f"batch.{key}"
            )
    if not re.fullmatch(r"[1-9][0-9]*h", batch.completion_window):
        raise ConfigError('must be hours, e.g. "24h"', path=source, key="batch.completion_window")


RENDER_RANGES = {
    "timeout_s": (0.05, 60.0),
    "max_bytes": (1_000, 100_000_000),
    "memory_mb": (256, 65_536),
    "workers": (1, 64),
}
"""``[render]`` keys and their allowed ranges: a limit of 0 or of billions is always a mistake."""


def _check_render(limits: RenderLimits, source: str) -> None:
    for key, (low, high) in RENDER_RANGES.items():
        value = getattr(limits, key)
        if not low <= value <= high:
            raise ConfigError(
                f"must be between {low:g} and {high:g}, got {value!r}", path=source, key=f"render.{key}"
            )
