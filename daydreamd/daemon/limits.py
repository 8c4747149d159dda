"""What the pool may start now: concurrency slots, per-model limits, rate windows, pauses, parking.

A global concurrency over every generation in progress; per model an adaptive concurrency
(:class:`~daydreamd.daemon.ratelimit.AdaptiveLimit`, whose learned level survives restarts) and
a requests-per-minute window; per provider another window. Claiming can be paused for every
model or for some, and a quota failure parks all LLM work for a while. The values come from
the settings in force; :meth:`PoolLimits.apply` follows a change without touching calls in flight.

The windows survive restarts: :meth:`PoolLimits.seed` starts them from the requests the run
state knows of (``Store.recent_requests``), and :meth:`PoolLimits.recent_requests` is what a
stopping service saves, so a quick restart never sends a second minute's budget in one minute.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio

from daydreamd.core.config import Settings
from daydreamd.daemon.ratelimit import AdaptiveLimit, SlidingWindow
from daydreamd.daemon.settings import LiveSettings

RPM_WINDOW_S = 61.0
"""Our requests-per-minute window is a second longer than the provider's: requests reach the
server a little after we count them, and a server that counts rejected requests too turns one
early request into a run of 429s. The margin costs under 2% of the budget."""


@dataclass(slots=True)
class ModelState:
    """Live limits and in-flight count of one model."""

    limit: AdaptiveLimit
    window: SlidingWindow
    provider: str
    in_flight: int = 0


class PoolLimits:
    """The pool's limits and what holds them: slots, models, provider windows, pauses, parking."""

    def __init__(self, settings: LiveSettings, provider_of: Callable[[str], str]) -> None:
        """``provider_of(model_id)`` names a model's provider (``""`` when unknown)."""
        self._settings = settings
        self._provider_of = provider_of
        self.models: dict[str, ModelState] = {}
        self.providers: dict[str, SlidingWindow] = {}
        self.slots: set[str] = set()
        """Generations holding a concurrency slot: from their start until their call is over
        (a reply in memory, or a failure for good; a copy until its run ends).

        So a slot is a request at the provider (or waiting for a retry's rate window), never our
        own file work: saving the reply, parsing and committing happen outside it. What may pile
        up behind a slow or full disk is bounded separately (``Pool._free``: at most
        ``2 x pool.concurrency`` generations between start and commit).
        """
        self.paused = False
        self.paused_models: set[str] = set()
        self.parked_until: float | None = None
        self._learned: dict[str, float] = {}
        self._seeds: dict[str, list[float]] = {}
        """Per model, monotonic times of requests made before this process started (see :meth:`seed`)."""

    # -- settings and learned levels -----------------------------------------------------------

    def apply(self, settings: Settings) -> None:
        """Follow changed limits; calls in flight go on."""
        for model_id, state in self.models.items():
            limits = settings.pool.model_limits(model_id)
            state.limit.set_maximum(limits.concurrency)
            state.window.set_limit(limits.requests_per_minute)
        for provider, window in self.providers.items():
            window.set_limit(settings.pool.provider_rpm(provider))

    def restore(self, learned: dict[str, float]) -> None:
        """Start models at these learned concurrency levels (from the run state)."""
        self._learned = dict(learned)

    def learned(self) -> dict[str, float]:
        """Every model's learned concurrency level, to save."""
        return {model_id: state.limit.value for model_id, state in self.models.items()}

    def seed(self, requests: Mapping[str, Sequence[float]]) -> None:
        """Start the rate windows from earlier requests: per model, Unix times (``Store.recent_requests``).

        Each model's window gets its own, each provider's window those of its models; windows
        made later (on first use) get them then.
        """
        offset = time.monotonic() - time.time()
        self._seeds = {model: [t + offset for t in stamps] for model, stamps in requests.items() if stamps}
        for model_id, state in self.models.items():
            state.window.seed(self._seeds.get(model_id, ()))
        for provider, window in self.providers.items():
            window.seed(self._provider_seeds(provider))

    def recent_requests(self) -> dict[str, list[float]]:
        """Per model, Unix times of the requests in its window now (seeded ones included): to save
        when the service stops, so the next one starts from them."""
        offset = time.monotonic() - time.time()
        found = {model: [t - offset for t in stamps] for model, stamps in self._seeds.items()}
        found.update(
            {model_id: [t - offset for t in state.window.stamps()] for model_id, state in self.models.items()}
        )
        horizon = time.time() - RPM_WINDOW_S
        kept = {model: [t for t in stamps if t > horizon] for model, stamps in found.items()}
        return {model: stamps for model, stamps in kept.items() if stamps}

    def _provider_seeds(self, provider: str) -> list[float]:
        """The seeded requests of every model of ``provider``."""
        mine = [stamps for model, stamps in self._seeds.items() if self._provider_of(model) == provider]
        return [t for stamps in mine for t in stamps]

    # -- models and windows --------------------------------------------------------------------

    def model(self, model_id: str) -> ModelState:
        """The state of ``model_id``, made on first use at its learned (or configured) level."""
        state = self.models.get(model_id)
        if state is None:
            limits = self._settings.current.pool.model_limits(model_id)
            try:
                limit = AdaptiveLimit(
                    self._learned.get(model_id, limits.concurrency), maximum=limits.concurrency
                )
            except ValueError:  # a corrupt learned value: start again from the configured level
                limit = AdaptiveLimit(limits.concurrency, maximum=limits.concurrency)
            state = ModelState(
                limit=limit,
                window=SlidingWindow(limits.requests_per_minute, RPM_WINDOW_S),
                provider=self._provider_of(model_id),
            )
            state.window.seed(self._seeds.get(model_id, ()))
            self.models[model_id] = state
        return state

    def windows(self, model_id: str) -> list[SlidingWindow]:
        """The rate windows an attempt on ``model_id`` must fit: the model's and its provider's."""
        state = self.model(model_id)
        window = self.providers.get(state.provider)
        if window is None:
            rpm = self._settings.current.pool.provider_rpm(state.provider)
            window = self.providers[state.provider] = SlidingWindow(rpm, RPM_WINDOW_S)
            window.seed(self._provider_seeds(state.provider))
        return [state.window, window]

    # -- slots ---------------------------------------------------------------------------------

    def free(self) -> int:
        """Slots free under the global concurrency."""
        return self._settings.current.pool.concurrency - len(self.slots)

    def model_free(self, model_id: str, free: int, now: float) -> int:
        """Of ``free`` slots, how many ``model_id`` may take now (0 while it is held back)."""
        if self.holds_back(model_id, now):
            return 0
        return min(free, self.model_room(model_id))

    def holds_back(self, model_id: str, now: float) -> bool:
        """Whether ``model_id`` may not call now at all: paused, parked, or backing off after 429s."""
        if self.parked_until is not None and now < self.parked_until:
            return True
        return model_id in self.paused_models or self.model(model_id).limit.resume_at > now

    def model_room(self, model_id: str) -> int:
        """How many more calls ``model_id``'s concurrency allows now (0 or less when none)."""
        state = self.model(model_id)
        return state.limit.limit - state.in_flight

    def take(self, gen_id: str, model_id: str | None) -> None:
        """``gen_id`` takes a slot (and one of ``model_id``'s, for a call)."""
        self.slots.add(gen_id)
        if model_id is not None:
            self.model(model_id).in_flight += 1

    def release(self, gen_id: str, model_id: str | None) -> bool:
        """Give back the slot ``gen_id`` took; False when it had none (released already)."""
        if gen_id not in self.slots:
            return False
        self.slots.discard(gen_id)
        if model_id is not None:
            self.model(model_id).in_flight -= 1
        return True

    # -- pauses and parking --------------------------------------------------------------------

    def set_paused(self, model_id: str | None, paused: bool) -> None:
        """Pause or resume claiming for every model (None) or one."""
        if model_id is None:
            self.paused = paused
            if not paused:
                self.paused_models.clear()
        elif paused:
            self.paused_models.add(model_id)
        else:
            self.paused_models.discard(model_id)

    def park(self, seconds: float) -> None:
        """Hold every LLM call for ``seconds`` (after a quota failure)."""
        self.parked_until = time.monotonic() + seconds

    def parked_for(self, now: float) -> float | None:
        """Seconds until parked work resumes, or None when nothing is parked."""
        if self.parked_until is not None and self.parked_until > now:
            return self.parked_until - now
        return None

    async def wait_unparked(self) -> None:
        """Hold a call while work is parked."""
        if (delay := self.parked_for(time.monotonic())) is not None:
            await anyio.sleep(delay)
