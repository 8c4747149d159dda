"""Endpoints: which one a call takes, and what each holds (in memory, real offline providers)."""

from __future__ import annotations

from pathlib import Path

from daydreamd.core.config import load_settings
from daydreamd.daemon.endpoints import AttemptResult, Endpoint, Endpoints, OutagePolicy, estimate_tokens
from daydreamd.llm.offline import MockProvider
from daydreamd.llm.types import LlmRequest

NOW = 1000.0
POLICY = OutagePolicy(failures=3, probe_s=5.0, probe_cap_s=120.0)

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
    """Three outage failures in a row park small for 5 s (an answer in between resets the count);
    failures of calls sent before the park extend nothing; big takes the calls meanwhile. Then one
    call at a time tries small: a failure parks it for 10 s, 20 s, ... up to the 120 s cap; an
    answer ends it at once. A retry avoids the endpoint that failed when another has room."""
    all_ = endpoints(tmp_path)
    small = next(e for e in all_.of("fleet") if e.name == "small")
    down, answer = AttemptResult(outage=True), AttemptResult(ok=True)
    for _ in range(2):
        assert not all_.record(small, down, now=NOW, outages=POLICY)
    all_.record(small, answer, now=NOW, outages=POLICY)
    assert small.failures == 0
    parked = [all_.record(small, down, now=NOW, outages=POLICY) for _ in range(3)]
    assert parked == [False, False, True] and small.parked_until == NOW + 5.0
    for _ in range(20):  # the other calls in flight when it went down
        assert not all_.record(small, down, now=NOW + 1, outages=POLICY)
    assert small.parked_until == NOW + 5.0
    assert (
        name_of(all_.pick("fleet", 10, NOW)) == "big"
        and name_of(all_.pick("fleet", 10, NOW + 5.0)) == "small"
    )
    probe = all_.take(small, 10)  # one call at a time tries it
    assert not small.has_room(10, NOW + 5.0)
    all_.give_back(probe)
    at = NOW + 5.0
    for expected in (10.0, 20.0, 40.0, 80.0, 120.0, 120.0):
        assert all_.record(small, down, now=at, outages=POLICY)
        assert small.parked_until == at + expected
        at += expected
    assert all_.wait_time("fleet", at) == 0.0  # big is open
    assert name_of(all_.pick("fleet", 10, at, besides=small)) == "big"
    all_.record(small, AttemptResult(), now=at, outages=POLICY)  # an answer, even a 4xx: it is up
    assert (small.failures, small.parks, small.has_room(10, at)) == (0, 0, True)


def test_a_429_halves_an_endpoints_concurrency_and_honours_retry_after(tmp_path: Path) -> None:
    """big (3 at once) gets a 429 with Retry-After 2 s while 3 calls are in flight: it takes 1 at
    once, and none before the 2 s are over (the learning itself is AdaptiveLimit's, tested with
    the models'); the other endpoint of the fleet is untouched."""
    all_ = endpoints(tmp_path)
    big = next(e for e in all_.of("fleet") if e.name == "big")
    assert big.limit is not None and big.limit.limit == 3
    places = [all_.take(big, 10) for _ in range(3)]
    all_.record(big, AttemptResult(rate_limited=True, retry_after=2.0), now=NOW, outages=POLICY)
    assert big.limit.limit == 1
    for place in places:
        all_.give_back(place)
    assert not big.has_room(10, big.limit.resume_at - 0.5)
    assert big.has_room(10, big.limit.resume_at)
    small = next(e for e in all_.of("fleet") if e.name == "small")
    assert small.limit is not None and small.limit.limit == 1  # untouched


def test_a_reload_routing_a_model_to_an_endpoint_not_started_keeps_its_endpoints(tmp_path: Path) -> None:
    """A route to an endpoint the service did not start is left out (it needs a restart); a model
    left with none keeps the endpoints it had; limits of known endpoints follow at once."""
    all_ = endpoints(tmp_path)
    config = tmp_path / "reloaded.toml"
    config.write_text(
        CONFIG.replace('endpoints = ["metered"]', 'endpoints = ["new"]')
        .replace('endpoints = ["small", "big"]', 'endpoints = ["new", "big"]')
        .replace("concurrency = 3", "concurrency = 5")
        + '[endpoints.new]\nkind = "mock"\n'
    )
    all_.apply(load_settings(config, {}))
    assert [e.name for e in all_.of("fleet")] == ["big"]
    assert [e.name for e in all_.of("metered")] == ["metered"]
    big = all_.of("fleet")[0]
    assert big.limit is not None and big.limit.maximum == 5
