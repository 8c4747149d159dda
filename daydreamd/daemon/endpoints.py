"""Endpoints: the servers (and API keys) calls go to, their own limits, and which one a call takes.

Each model is served by the endpoints its route names (``[models.<id>] endpoints``; ``llm``, the
``[llm]`` section, for the others). An endpoint has its own provider (URL, key, headers, timeout)
and its own limits, on top of the model's and the vendor's: requests per minute and tokens per
minute per API key (sliding 60 s windows, like the models'), and calls in flight at once (learned
from its 429s like a model's, never above the configured number). A call goes out only when its
model, its vendor and one of its endpoints all have room; of a model's endpoints with room, it
takes the one with the most (the fewest calls in flight for its concurrency), so a fleet of
servers fills evenly and a slower one gets fewer calls. An endpoint
that stops answering (``pool.outage_failures`` outage failures in a row) is parked for
``pool.outage_probe_s`` (doubling while it stays down) and its model's calls, retries included,
go to the others; then one call tries it again.

Everything here runs on the event loop and does no I/O; the pool takes and gives back places.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from daydreamd.core.config import EndpointSettings, Settings
from daydreamd.daemon.limits import RPM_WINDOW_S
from daydreamd.daemon.ratelimit import AdaptiveLimit, SlidingWindow, TokenWindow
from daydreamd.llm.types import LlmRequest, Provider

UNLIMITED = 1 << 30
"""The room of an endpoint without a concurrency of its own."""
CHARS_PER_TOKEN = 4
"""How a prompt's tokens are estimated before its reply reports them (on the high side for English)."""


def estimate_tokens(request: LlmRequest) -> int:
    """What a call may use at most, as a provider counts it when it is sent: the prompt (estimated)
    plus ``max_tokens``."""
    return math.ceil(len(request.prompt) / CHARS_PER_TOKEN) + request.max_tokens


@dataclass(slots=True)
class Endpoint:
    """One endpoint's provider, limits and calls in flight."""

    name: str
    provider: Provider
    settings: EndpointSettings
    requests: SlidingWindow = field(init=False)
    tokens: TokenWindow = field(init=False)
    limit: AdaptiveLimit | None = field(init=False)
    """Its calls at once, learned from its 429s like a model's (None: no ``concurrency`` set)."""
    in_flight: int = 0
    failures: int = 0
    """Outage failures in a row (no answer, or a 5xx): at ``pool.outage_failures`` it is parked."""
    parked_until: float = 0.0
    """Monotonic time before which no call is sent to it (it looked down); then one is tried."""
    parks: int = 0
    """Times it was parked since its last answer: while above 0, one call at a time tries it."""

    def __post_init__(self) -> None:
        self.requests = SlidingWindow(self.settings.requests_per_minute, RPM_WINDOW_S)
        self.tokens = TokenWindow(self.settings.tokens_per_minute, RPM_WINDOW_S)
        self.limit = self._adaptive(self.settings.concurrency)

    @staticmethod
    def _adaptive(concurrency: int) -> AdaptiveLimit | None:
        return AdaptiveLimit(concurrency, maximum=concurrency) if concurrency else None

    def apply(self, settings: EndpointSettings) -> None:
        """Follow changed limits (a reload); calls in flight go on."""
        self.settings = settings
        self.requests.set_limit(settings.requests_per_minute)
        self.tokens.set_limit(settings.tokens_per_minute)
        if not settings.concurrency:
            self.limit = None
        elif self.limit is None:
            self.limit = self._adaptive(settings.concurrency)
        else:
            self.limit.set_maximum(settings.concurrency)

    def is_open(self, now: float) -> bool:
        """Whether it takes calls at all now, its calls at once aside: not parked (or, after a park,
        not already trying one), not paused by a 429's Retry-After, a request place free."""
        limit = self.limit
        return (
            now >= self.parked_until
            and (self.parks == 0 or self.in_flight == 0)
            and (limit is None or limit.resume_at <= now)
            and self.requests.wait_time() == 0
        )

    def has_room(self, tokens: int, now: float) -> bool:
        """Whether one more call of ``tokens`` may go to it now."""
        limit = self.limit
        return (
            self.is_open(now) and (limit is None or self.in_flight < limit.limit) and self.tokens.fits(tokens)
        )

    def room(self, now: float) -> int:
        """How many more calls it takes now within its calls at once (0 while it is not open;
        ``UNLIMITED`` without a concurrency of its own)."""
        if not self.is_open(now):
            return 0
        return max(0, self.limit.limit - self.in_flight) if self.limit is not None else UNLIMITED

    def load(self) -> tuple[float, int]:
        """How full it is (lower: more room): calls in flight for its concurrency, then in flight."""
        return (self.in_flight / self.limit.limit if self.limit else 0.0, self.in_flight)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How one attempt at an endpoint ended, as far as the endpoint's health and limits care."""

    ok: bool = False
    outage: bool = False
    """No answer at all, or a 5xx."""
    rate_limited: bool = False
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class OutagePolicy:
    """When an endpoint counts as down, and how long it then waits (``pool.outage_*``)."""

    failures: int = 3
    probe_s: float = 5.0
    probe_cap_s: float = 120.0


@dataclass(slots=True)
class Place:
    """What one call took at an endpoint, to give back and correct."""

    endpoint: Endpoint
    tokens: list[float]
    """The token window's entry (see :meth:`TokenWindow.correct`)."""


class Endpoints:
    """Every endpoint by name, and each model's route to them."""

    def __init__(self, providers: Mapping[str, Provider], settings: Settings) -> None:
        """``providers``: one per endpoint name (``Settings.all_endpoints``)."""
        configured = settings.all_endpoints()
        self._all = {
            name: Endpoint(name, provider, configured.get(name, EndpointSettings()))
            for name, provider in providers.items()
        }
        self._route: Callable[[str], tuple[str, ...]] = settings.endpoints_of

    def apply(self, settings: Settings) -> None:
        """Follow changed limits and routes (a reload). An endpoint not started is left out of a
        route (it needs a restart); a model left with none keeps the endpoints it had."""
        configured = settings.all_endpoints()
        for name, endpoint in self._all.items():
            if name in configured:
                endpoint.apply(configured[name])
        before, started = self._route, set(self._all)

        def route(model_id: str) -> tuple[str, ...]:
            names = tuple(name for name in settings.endpoints_of(model_id) if name in started)
            return names or before(model_id)

        self._route = route

    def of(self, model_id: str) -> list[Endpoint]:
        """The endpoints that serve ``model_id`` (none: its calls cannot go anywhere)."""
        return [self._all[name] for name in self._route(model_id) if name in self._all]

    def pick(
        self, model_id: str, tokens: int, now: float, *, besides: Endpoint | None = None
    ) -> Endpoint | None:
        """The endpoint with the most room for one call of ``tokens`` now, or None; ``besides``
        (one that just failed) only when no other has room."""
        open_ = [endpoint for endpoint in self.of(model_id) if endpoint.has_room(tokens, now)]
        others = [endpoint for endpoint in open_ if endpoint is not besides]
        return min(others or open_, key=Endpoint.load, default=None)

    def record(
        self, endpoint: Endpoint, attempt: AttemptResult, *, now: float, outages: OutagePolicy
    ) -> bool:
        """An attempt at ``endpoint`` ended. Returns True when this parked the endpoint.

        ``outages.failures`` outage failures in a row (no answer, a 5xx) park it for
        ``outages.probe_s``: its model's calls go to the others. Then one call at a time tries it;
        each failed try parks it again for twice as long, up to ``outages.probe_cap_s``. Failures of
        calls sent before it was parked count, but extend nothing. Any answer (even a 4xx) ends it.
        A 429 halves its learned concurrency (once per episode, honouring Retry-After) and answers
        that succeed grow it back, as for a model.
        """
        if endpoint.limit is not None:
            if attempt.rate_limited:
                endpoint.limit.on_rate_limited(attempt.retry_after, in_flight=endpoint.in_flight)
            elif attempt.ok:
                endpoint.limit.on_success()
        if not attempt.outage:
            endpoint.failures = endpoint.parks = 0
            endpoint.parked_until = 0.0
            return False
        endpoint.failures += 1
        if now < endpoint.parked_until or endpoint.failures < outages.failures:
            return False
        endpoint.parks += 1
        endpoint.parked_until = now + min(
            outages.probe_s * 2 ** min(endpoint.parks - 1, 30), outages.probe_cap_s
        )
        return True

    def room(self, model_id: str, now: float) -> int:
        """How many more of the model's calls its endpoints take now, together."""
        return min(UNLIMITED, sum(endpoint.room(now) for endpoint in self.of(model_id)))

    def held_back(self, model_id: str, now: float) -> bool:
        """Whether none of the model's endpoints is open now (parked, paused, out of request places)."""
        return not any(endpoint.is_open(now) for endpoint in self.of(model_id))

    def wait_time(self, model_id: str, now: float) -> float:
        """Seconds until one of the model's endpoints is neither parked, nor paused by a 429's
        Retry-After, nor out of request places (0: one is now, or only their calls at once are full)."""
        waits = [
            max(
                endpoint.requests.wait_time(),
                endpoint.parked_until - now,
                endpoint.limit.resume_at - now if endpoint.limit is not None else 0.0,
            )
            for endpoint in self.of(model_id)
        ]
        return max(0.0, min(waits, default=0.0))

    def move(self, place: Place, to: Endpoint) -> None:
        """A retry goes to ``to`` instead of the endpoint of its first attempt (which failed)."""
        place.endpoint.in_flight -= 1
        to.in_flight += 1
        place.endpoint = to

    def take(self, endpoint: Endpoint, tokens: int) -> Place:
        """A call of ``tokens`` goes to ``endpoint`` now: its places in the windows and in flight."""
        endpoint.requests.try_acquire()
        endpoint.in_flight += 1
        return Place(endpoint, endpoint.tokens.take(tokens))

    @staticmethod
    def give_back(place: Place) -> None:
        """The call is over (its window places stay: the requests were made)."""
        place.endpoint.in_flight -= 1

    def all(self) -> list[Endpoint]:
        """Every endpoint, by name."""
        return [self._all[name] for name in sorted(self._all)]
