"""Endpoints: which one a call takes, and what each holds (in memory, real offline providers)."""

from __future__ import annotations

from pathlib import Path

from daydreamd.core.config import load_settings
from daydreamd.daemon.endpoints import Endpoint, Endpoints, estimate_tokens
from daydreamd.llm.offline import MockProvider
from daydreamd.llm.types import LlmRequest

NOW = 1000.0

CONFIG = """
[llm]
provider = "mock"
[endpoints.small]
kind = "mock"
concurrency = 1
[endpoints.big]
kind = "mock"
concurrency = 3
[endpoints.metered]
kind = "mock"
requests_per_minute = 2
tokens_per_minute = 1000
[models.fleet]
endpoints = ["small", "big"]
[models.metered]
endpoints = ["metered"]
"""


def endpoints(tmp_path: Path) -> Endpoints:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    settings = load_settings(config, {})
    return Endpoints({name: MockProvider() for name in settings.all_endpoints()}, settings)


def name_of(endpoint: Endpoint | None) -> str | None:
    return endpoint.name if endpoint is not None else None


def test_a_fleet_fills_the_endpoint_with_the_most_room_first(tmp_path: Path) -> None:
    """small takes 1 at once, big 3: calls go small (a tie of empties goes to the first listed),
    then big three times (small is full), then none fits; given back, each is the emptiest again."""
    all_ = endpoints(tmp_path)
    taken = []
    for _ in range(4):
        chosen = all_.pick("fleet", 10, NOW)
        assert chosen is not None
        taken.append(all_.take(chosen, 10))
    assert [place.endpoint.name for place in taken] == ["small", "big", "big", "big"]
    assert all_.pick("fleet", 10, NOW) is None
    all_.give_back(taken[1])  # big at 2 of 3, small still full
    assert name_of(all_.pick("fleet", 10, NOW)) == "big"
    all_.give_back(taken[0])  # small empty (0 of 1) beats big (2 of 3)
    assert name_of(all_.pick("fleet", 10, NOW)) == "small"
    assert [e.name for e in all_.of("anything_else")] == ["llm"]


def test_requests_and_tokens_per_minute_hold_calls_back(tmp_path: Path) -> None:
    """metered: 2 requests and 1,000 tokens a minute. A 600-token call fits, a second does not
    until the first is corrected to its usage (200); then the request limit holds the third."""
    all_ = endpoints(tmp_path)
    metered = all_.pick("metered", 600, NOW)
    assert metered is not None
    first = all_.take(metered, 600)
    assert all_.pick("metered", 600, NOW) is None
    metered.tokens.correct(first.tokens, 200)
    assert all_.pick("metered", 600, NOW) is metered
    all_.take(metered, 600)
    assert all_.pick("metered", 1, NOW) is None and all_.wait_time("metered", NOW) > 0


def test_a_call_is_estimated_as_its_prompt_plus_max_tokens() -> None:
    request = LlmRequest(model="m", prompt="x" * 401, max_tokens=1000, temperature=None)
    assert estimate_tokens(request) == 101 + 1000


def test_an_endpoint_that_stops_answering_is_parked_and_the_others_take_its_calls(tmp_path: Path) -> None:
    """Three outage failures in a row park small for 5 s (then 10 s if it fails again at once);
    meanwhile big takes the calls; an answer resets the count. A retry avoids the endpoint that
    failed when another has room."""
    all_ = endpoints(tmp_path)
    small = next(e for e in all_.of("fleet") if e.name == "small")
    for _ in range(2):
        assert not all_.record(small, outage=True, now=NOW, threshold=3, park_s=5.0)
    all_.record(small, outage=False, now=NOW, threshold=3, park_s=5.0)
    assert small.failures == 0
    parked = [all_.record(small, outage=True, now=NOW, threshold=3, park_s=5.0) for _ in range(3)]
    assert parked == [False, False, True] and small.parked_until == NOW + 5.0
    assert (
        name_of(all_.pick("fleet", 10, NOW)) == "big"
        and name_of(all_.pick("fleet", 10, NOW + 5.0)) == "small"
    )
    assert all_.record(small, outage=True, now=NOW + 5.0, threshold=3, park_s=5.0)
    assert small.parked_until == NOW + 15.0
    assert all_.wait_time("fleet", NOW + 5.0) == 0.0  # big is open
    assert name_of(all_.pick("fleet", 10, NOW + 20.0, besides=small)) == "big"


def test_a_429_halves_an_endpoints_concurrency_and_honours_retry_after(tmp_path: Path) -> None:
    """big (3 at once) gets a 429 with Retry-After 2 s while 3 calls are in flight: it takes 1 at
    once, and none before the 2 s are over (the learning itself is AdaptiveLimit's, tested with
    the models'); the other endpoint of the fleet is untouched."""
    all_ = endpoints(tmp_path)
    big = next(e for e in all_.of("fleet") if e.name == "big")
    assert big.limit is not None and big.limit.limit == 3
    places = [all_.take(big, 10) for _ in range(3)]
    all_.record(big, outage=False, now=NOW, threshold=3, park_s=5.0, rate_limited=True, retry_after=2.0)
    assert big.limit.limit == 1
    for place in places:
        all_.give_back(place)
    assert not big.has_room(10, big.limit.resume_at - 0.5)
    assert big.has_room(10, big.limit.resume_at)
    small = next(e for e in all_.of("fleet") if e.name == "small")
    assert small.limit is not None and small.limit.limit == 1  # untouched
