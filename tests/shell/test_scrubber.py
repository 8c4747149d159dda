"""The API key's scrubber, where the key is read from, and the log's second net.

The scrubber is pinned three ways: by examples (the whole key, the masked forms gateways and
dashboards show, the key inside JSON and at the text's edges, and texts that must come back
untouched), by a property test against a slow, obviously right oracle, and by its speed on a
20 KB reply.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from daydreamd.core.config import LlmSettings, Settings, load_settings
from daydreamd.core.errors import ConfigError
from daydreamd.daemon.logconfig import configure_logging, scrub_event
from daydreamd.daemon.settings import key_scrubber
from daydreamd.llm.apikey import (
    CREDENTIALS_DIRECTORY,
    MIN_FRAGMENT,
    REDACTED,
    Scrubber,
    check_private,
    public_prefix_length,
    read_api_key,
)
from daydreamd.llm.openai_compat import OpenAiCompatibleClient
from daydreamd.llm.types import CallFailure, LlmRequest
from tests.fakellm import FakeLlm, Fault, FaultKind, key_echoes

ROOT = Path(__file__).parents[2]
KEY = "sk-or-v1-" + hashlib.sha256(b"daydreamd scrubber test key").hexdigest()
"""An OpenRouter-shaped key: the public prefix ``sk-or-v1-`` and 64 hex digits."""
SCRUB = Scrubber(KEY)
PROSE = (
    "The concepts connect through a shared mechanism: feedback between a decoded signal and its "
    "source. Scores were 7/10, ids d_0123456789abcdef and cohort_3f2a9c1d0b7e, a digest "
    f"{hashlib.sha256(b'unrelated').hexdigest()}, and the word 'deadbeef-cafe-f00d'.\n"
)


def oracle(secret: str, text: str) -> str:
    """The rule of :class:`Scrubber`, the slow way: cover every position where a piece of the key
    at least ``min(12, len(key))`` long, reaching past its public prefix, matches; replace each
    covered stretch by one REDACTED."""
    if len(secret) < 4:
        return text
    least, public = min(MIN_FRAGMENT, len(secret)), public_prefix_length(secret)
    covered = [False] * len(text)
    for start in range(len(text)):
        for offset in range(len(secret)):
            length = 0
            while (
                start + length < len(text)
                and offset + length < len(secret)
                and text[start + length] == secret[offset + length]
            ):
                length += 1
            if length >= least and offset + length > public:
                covered[start : start + length] = [True] * length
    out, index = [], 0
    while index < len(text):
        if covered[index]:
            while index < len(text) and covered[index]:
                index += 1
            out.append(REDACTED)
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


# ---- what is redacted ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(KEY, REDACTED, id="the-whole-key"),
        pytest.param(f"Bearer {KEY}", f"Bearer {REDACTED}", id="after-bearer"),
        pytest.param(f"{KEY} was sent", f"{REDACTED} was sent", id="at-the-start"),
        pytest.param(f"you sent {KEY}", f"you sent {REDACTED}", id="at-the-end"),
        pytest.param(KEY[:-4], REDACTED, id="last-4-removed"),
        pytest.param(f"key {KEY[:-4]}xxxx", f"key {REDACTED}xxxx", id="last-4-masked"),
        pytest.param(f"{KEY[:12]}****", f"{REDACTED}****", id="first-12-then-stars"),
        pytest.param(f"{KEY[:12]}...{KEY[-4:]}", f"{REDACTED}...{KEY[-4:]}", id="first-12-dots-last-4"),
        pytest.param(f"{KEY[:20]}…", f"{REDACTED}…", id="first-20-ellipsis"),
        pytest.param(f"[{KEY[30:42]}]", f"[{REDACTED}]", id="12-from-the-middle"),
        pytest.param(f"...{KEY[-12:]}", f"...{REDACTED}", id="last-12"),
        pytest.param(f"{KEY}{KEY}", REDACTED, id="twice-in-a-row"),
        pytest.param(f"{KEY[:30]}\n{KEY[30:]}", f"{REDACTED}\n{REDACTED}", id="split-over-two-lines"),
        pytest.param(f"“{KEY}”", f"“{REDACTED}”", id="between-curly-quotes"),
        pytest.param(f"gen-fake-1-{KEY}", f"gen-fake-1-{REDACTED}", id="inside-an-id"),
        pytest.param(
            f"https://x.test/v1?key={KEY}&a=1", f"https://x.test/v1?key={REDACTED}&a=1", id="in-a-url"
        ),
    ],
)
def test_the_key_and_its_masked_forms_are_redacted(text: str, expected: str) -> None:
    assert SCRUB.text(text) == expected
    assert oracle(KEY, text) == expected


def test_the_key_inside_json_is_redacted_and_the_json_stays_valid() -> None:
    body = json.dumps(
        {"id": KEY, "model": f"m ({KEY[:12]}****)", "error": {"message": f"bad key {KEY[:-4]}"}}
    )
    clean = json.loads(SCRUB.text(body))
    assert clean == {
        "id": REDACTED,
        "model": f"m ({REDACTED}****)",
        "error": {"message": f"bad key {REDACTED}"},
    }


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(PROSE, id="prose-ids-and-hashes"),
        pytest.param("OpenRouter keys start with sk-or-v1- and are secret.", id="the-bare-prefix"),
        pytest.param(f"{KEY[:11]}…", id="prefix-and-2-key-characters"),
        pytest.param(f"ends in ...{KEY[-11:]}", id="11-characters-of-key-material"),
        pytest.param(f"ends in ...{KEY[-4:]}", id="the-last-4-as-dashboards-show"),
        pytest.param(f"{KEY[:12].upper()}", id="other-case"),
        pytest.param(REDACTED, id="already-redacted"),
        pytest.param("", id="empty"),
        pytest.param("naïve “quotes” — and an emoji 😀 \udcff", id="non-ascii-and-a-lone-surrogate"),
    ],
)
def test_ordinary_text_comes_back_untouched(text: str) -> None:
    assert SCRUB.text(text) is text
    assert oracle(KEY, text) == text


def test_the_public_prefix_is_known_for_common_key_shapes() -> None:
    assert public_prefix_length(KEY) == len("sk-or-v1-")
    assert public_prefix_length("sk-proj-" + "A1b2C3d4E5" * 5) == len("sk-proj-")
    assert public_prefix_length("sk-ant-api03-" + "Zz9" * 30) == len("sk-ant-api03-")
    assert public_prefix_length(hashlib.sha256(b"x").hexdigest()) == 0
    assert public_prefix_length("sk-or-v1-short") == 0  # too little left to be key material


def test_a_long_prefix_alone_is_not_redacted_but_reaching_past_it_is() -> None:
    key = "sk-ant-api03-" + hashlib.sha256(b"anthropic-shaped").hexdigest()
    scrub = Scrubber(key)
    assert scrub.text("keys look like sk-ant-api03-...") == "keys look like sk-ant-api03-..."
    assert scrub.text(f"{key[:14]}****") == f"{REDACTED}****"


def test_short_and_missing_keys() -> None:
    assert Scrubber(None).text(PROSE) is PROSE and not Scrubber(None).active
    assert Scrubber("").text("anything") == "anything"
    assert Scrubber("abc").text("abc abc") == "abc abc"  # shorter than 4: would eat words
    assert Scrubber("s3cr").text("a s3cr b s3c") == f"a {REDACTED} b s3c"  # only the whole key
    assert Scrubber("secret-value!").text("secret-value! secret-valu") == f"{REDACTED} secret-valu"


def test_a_key_with_non_ascii_characters_is_still_redacted() -> None:
    key = "clé-" + "ü" * 4 + hashlib.sha256(b"non-ascii").hexdigest()[:20]
    assert Scrubber(key).text(f"x {key[:14]} y") == f"x {REDACTED} y"


def test_the_repr_never_shows_the_key() -> None:
    assert KEY not in repr(SCRUB) and KEY[:12] not in repr(SCRUB)
    assert Scrubber(KEY) == SCRUB and hash(Scrubber(KEY)) == hash(SCRUB)


# ---- the rule, checked against the oracle -------------------------------------------------------

_HEX = "0123456789abcdef"


@st.composite
def keys_and_texts(draw: st.DrawFn) -> tuple[str, str]:
    prefix = draw(st.sampled_from(["sk-or-v1-", "sk-proj-", "", "sk-ant-api03-"]))
    body = draw(st.text(alphabet=_HEX + "XYZ_-", min_size=0, max_size=40))
    key = prefix + body
    segments = draw(
        st.lists(
            st.one_of(
                st.text(alphabet=_HEX + " .*-sk[]“”é\n", max_size=12),  # near misses included
                st.tuples(st.integers(0, len(key)), st.integers(0, len(key))).map(
                    lambda span: key[min(span) : max(span)]
                ),
                # pieces right at the threshold, at every offset: where a gap in the blocks would show
                st.tuples(st.integers(0, len(key)), st.integers(MIN_FRAGMENT - 1, MIN_FRAGMENT + 1)).map(
                    lambda piece: key[piece[0] : piece[0] + piece[1]]
                ),
            ),
            max_size=8,
        )
    )
    return key, "".join(segments)


@settings(max_examples=400, deadline=None)
@given(keys_and_texts())
def test_the_scrubber_follows_its_rule(case: tuple[str, str]) -> None:
    key, text = case
    assert Scrubber(key).text(text) == oracle(key, text)


@settings(max_examples=200, deadline=None)
@given(keys_and_texts())
def test_no_piece_of_the_key_survives(case: tuple[str, str]) -> None:
    key, text = case
    if len(key) < 4:
        return
    least, public = min(MIN_FRAGMENT, len(key)), public_prefix_length(key)
    clean = Scrubber(key).text(text)
    for start in range(len(key) - least + 1):
        if start + least > public:
            assert key[start : start + least] not in clean


# ---- speed ----------------------------------------------------------------------------------------


def _best_of(function: Callable[[str], object], text: str, runs: int = 100) -> float:
    """The fastest of 10 rounds, in seconds per call, on this thread's CPU clock (less disturbed
    by other processes than the wall clock)."""
    best = float("inf")
    for _ in range(10):
        started = time.thread_time()
        for _ in range(runs):
            function(text)
        best = min(best, (time.thread_time() - started) / runs)
    return best


@pytest.mark.parametrize("curly", [False, True], ids=["ascii", "with-curly-quotes"])
def test_a_20kb_reply_is_scrubbed_in_well_under_a_tenth_of_a_millisecond(curly: bool) -> None:
    """About 25 us (ASCII) and 40 us (typographic quotes make it a 2-byte string) on the project's
    2-core machine when it is quiet: a few times one ``str.find`` over the same text. A busy
    machine slows both alike, so the bound is relative to that search, with an absolute ceiling
    that only a slow algorithm (a loop in Python over the characters) would reach."""
    words = (ROOT / "README.md").read_text(encoding="utf-8").split(" ")
    if curly:
        words = [f"“{word}”" if i % 40 == 0 else word for i, word in enumerate(words)]
    reply = " ".join(words)[:20_000]
    assert SCRUB.text(reply) is reply
    one_search = _best_of(lambda text: text.find(KEY[20:26]), reply)
    scrubbing = _best_of(SCRUB.text, reply)
    assert scrubbing < max(100e-6, 10 * one_search), (scrubbing, one_search)
    assert scrubbing < 500e-6


# ---- the client hands on nothing unscrubbed ------------------------------------------------------

FRAGMENTS = (KEY, KEY[:12], KEY[20:36], KEY[-16:])


def assert_clean(*things: object) -> None:
    for thing in things:
        text = f"{thing!r} {thing}"
        assert not [fragment for fragment in FRAGMENTS if fragment in text], text


async def test_every_field_of_an_echoing_reply_is_scrubbed() -> None:
    """The fake gateway puts the key, whole and masked, in id, model, provider,
    native_finish_reason and the content: the client's Reply holds none of it."""
    async with FakeLlm(echo_key=True) as fake, aiohttp.ClientSession() as session:
        client = OpenAiCompatibleClient(session, fake.base_url, KEY, 5.0)
        reply = await client.complete(LlmRequest(model="m/x", prompt="p", max_tokens=500, temperature=None))
    assert fake.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert_clean(reply, reply.text, reply.to_dict())
    fields = reply.to_dict()
    for name in ("generation_id", "served_model", "provider", "native_finish_reason"):
        assert REDACTED in fields[name], name
    assert reply.text.count(REDACTED) == len(key_echoes(KEY))
    assert reply.finish_reason == "stop"


@pytest.mark.parametrize(
    "fault",
    [
        FaultKind.AUTH,
        FaultKind.SERVER_ERROR,
        FaultKind.RATE_LIMIT,
        FaultKind.INVALID_REQUEST,
        Fault(kind=FaultKind.ERROR_BODY, code=502),
        FaultKind.MALFORMED_JSON,
        FaultKind.CONTENT_FILTER,
        FaultKind.EMPTY_CHOICES,
        Fault(kind=FaultKind.INVALID_REQUEST, message="x" * 470),  # the echoes straddle the cut
    ],
)
async def test_every_failure_of_an_echoing_gateway_is_scrubbed(fault: Fault | FaultKind) -> None:
    async with FakeLlm(echo_key=True) as fake, aiohttp.ClientSession() as session:
        fake.script(fault)
        client = OpenAiCompatibleClient(session, fake.base_url, KEY, 5.0)
        with pytest.raises(CallFailure) as caught:
            await client.complete(LlmRequest(model="m/x", prompt="p", max_tokens=500, temperature=None))
    failure = caught.value
    assert_clean(failure, failure.message, failure.args, failure.reply)
    if failure.reply is not None:
        assert_clean(failure.reply.text, failure.reply.to_dict())


# ---- where the key is read from -------------------------------------------------------------------


def _dotenv(folder: Path, text: str, mode: int = 0o600) -> Path:
    path = folder / ".env"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o700 | 0o004])
def test_a_dotenv_others_may_access_is_refused(tmp_path: Path, mode: int) -> None:
    dotenv = _dotenv(tmp_path, f"OPENROUTER_API_KEY={KEY}\n", mode)
    with pytest.raises(ConfigError) as caught:
        read_api_key("OPENROUTER_API_KEY", {}, dotenv)
    message = str(caught.value)
    assert str(dotenv) in message and f"{mode:04o}" in message
    assert f"chmod 600 {dotenv}" in message and "OPENROUTER_API_KEY" in message
    assert KEY[:12] not in message


def test_a_fifo_at_the_dotenv_path_is_refused_without_blocking(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    os.mkfifo(dotenv, 0o600)
    with ThreadPoolExecutor(1) as thread:
        read = thread.submit(read_api_key, "OPENROUTER_API_KEY", {}, dotenv)
        with pytest.raises(ConfigError, match="not a regular file"):
            read.result(timeout=10)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_dotenv_is_read(tmp_path: Path, mode: int) -> None:
    dotenv = _dotenv(tmp_path, f"OPENROUTER_API_KEY={KEY}\n", mode)
    assert read_api_key("OPENROUTER_API_KEY", {}, dotenv) == KEY


def test_a_dotenv_is_not_even_looked_at_when_the_environment_has_the_key(tmp_path: Path) -> None:
    dotenv = _dotenv(tmp_path, "OPENROUTER_API_KEY=from-file\n", 0o644)
    assert read_api_key("OPENROUTER_API_KEY", {"OPENROUTER_API_KEY": KEY}, dotenv) == KEY


def test_a_dotenv_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    dotenv = _dotenv(tmp_path, f"OPENROUTER_API_KEY={KEY}\n")
    info = os.stat_result((stat.S_IFREG | 0o600, 1, 1, 1, os.geteuid() + 4242, 0, 10, 0, 0, 0))
    with pytest.raises(ConfigError, match=r"owned by uid \d+.*Run: chown"):
        check_private(dotenv, info, "OPENROUTER_API_KEY")
    check_private(dotenv, dotenv.stat(), "OPENROUTER_API_KEY")  # our own: fine
    root_owned = os.stat_result((stat.S_IFREG | 0o600, 1, 1, 1, 0, 0, 10, 0, 0, 0))
    check_private(dotenv, root_owned, "OPENROUTER_API_KEY")


def test_an_unreadable_dotenv_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / ".env"
    folder.mkdir(mode=0o700)  # opening a folder as a file fails with an OSError
    with pytest.raises(ConfigError, match=r"cannot read .*\.env"):
        read_api_key("OPENROUTER_API_KEY", {}, folder)


@pytest.fixture(name="credentials")
def _credentials(tmp_path: Path) -> Path:
    folder = tmp_path / "credentials"
    folder.mkdir(mode=0o700)
    return folder


def test_a_systemd_credential_wins_over_the_environment_and_the_dotenv(
    tmp_path: Path, credentials: Path
) -> None:
    (credentials / "OPENROUTER_API_KEY").write_text(KEY + "\n", encoding="utf-8")
    dotenv = _dotenv(tmp_path, "OPENROUTER_API_KEY=from-file\n")
    env = {CREDENTIALS_DIRECTORY: str(credentials), "OPENROUTER_API_KEY": "from-env"}
    assert read_api_key("OPENROUTER_API_KEY", env, dotenv) == KEY  # trailing newline stripped


def test_without_its_credential_the_environment_then_the_dotenv_are_read(
    tmp_path: Path, credentials: Path
) -> None:
    (credentials / "OTHER_KEY").write_text("other\n", encoding="utf-8")
    (credentials / "BLANK_KEY").write_text("\n", encoding="utf-8")
    dotenv = _dotenv(tmp_path, "OPENROUTER_API_KEY=from-file\nBLANK_KEY=from-file\n")
    env = {CREDENTIALS_DIRECTORY: str(credentials)}
    assert read_api_key("OPENROUTER_API_KEY", {**env, "OPENROUTER_API_KEY": "from-env"}, dotenv) == "from-env"
    assert read_api_key("OPENROUTER_API_KEY", env, dotenv) == "from-file"
    assert read_api_key("BLANK_KEY", env, dotenv) == "from-file"  # a blank credential counts as absent
    assert read_api_key("OPENROUTER_API_KEY", {CREDENTIALS_DIRECTORY: str(tmp_path / "gone")}, None) is None


def test_an_unreadable_credential_is_a_config_error(credentials: Path) -> None:
    (credentials / "OPENROUTER_API_KEY").mkdir()
    env = {CREDENTIALS_DIRECTORY: str(credentials)}
    with pytest.raises(ConfigError, match="cannot read the credential"):
        read_api_key("OPENROUTER_API_KEY", env, None)


def test_a_credential_name_cannot_leave_the_credentials_folder(tmp_path: Path, credentials: Path) -> None:
    (tmp_path / "outside").write_text("not-a-credential\n", encoding="utf-8")
    env = {CREDENTIALS_DIRECTORY: str(credentials)}
    assert read_api_key("../outside", env, None) is None


def test_the_daemon_reads_the_key_for_its_log_only_for_online_providers(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("", encoding="utf-8")
    _dotenv(tmp_path, f"OPENROUTER_API_KEY={KEY}\n", 0o644)
    offline = Settings(llm=LlmSettings(provider="mock"), config_path=config)
    assert not key_scrubber(offline, {}).active  # the open .env is not read for the mock provider
    online = Settings(llm=LlmSettings(provider="openrouter"), config_path=config)
    with pytest.raises(ConfigError, match="chmod 600"):
        key_scrubber(online, {})
    assert key_scrubber(online, {"OPENROUTER_API_KEY": KEY}) == Scrubber(KEY)


# ---- the log's second net -----------------------------------------------------------------------


class Echo:
    """An object whose repr shows the key, as a careless third-party object might."""

    def __repr__(self) -> str:
        return f"Echo(token={KEY!r})"


def test_the_log_processor_scrubs_every_string_in_the_event() -> None:
    event = {
        "event": f"saw {KEY}",
        "nested": {"list": [KEY[:12] + "****", 3, None], KEY: (True, KEY[:-4])},
        "object": Echo(),
        "harmless": Path("/tmp/x"),
    }
    clean = scrub_event(SCRUB)(None, "info", event)
    assert clean["event"] == f"saw {REDACTED}"
    assert clean["nested"] == {"list": [f"{REDACTED}****", 3, None], REDACTED: (True, REDACTED)}
    assert clean["object"] == f"Echo(token='{REDACTED}')"
    assert clean["harmless"] is event["harmless"]


@pytest.fixture(name="restore_logging")
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.mark.usefixtures("restore_logging")
def test_the_configured_log_never_writes_the_key(tmp_path: Path) -> None:
    """Through the real configuration: structlog events, an exception, a stdlib logger."""
    stream, log_file = io.StringIO(), tmp_path / "dd.log"
    configure_logging(log_file=log_file, level="info", stream=stream, scrubber=Scrubber(KEY))
    log = structlog.get_logger("daydreamd.test")
    log.info("attempt_failed", message=f"HTTP 401: bad key {KEY[:12]}****", extra={"k": [KEY]})
    try:
        raise RuntimeError(f"upstream said {KEY}")
    except RuntimeError:
        log.exception("call_crashed")
    logging.getLogger("aiohttp.client").warning("echo %s", KEY[:-4])
    for handler in logging.getLogger().handlers:
        handler.flush()
    for text in (stream.getvalue(), log_file.read_text(encoding="utf-8")):
        assert text.count(REDACTED) >= 4, text
        assert KEY[:12] not in text and KEY[20:40] not in text
        assert "attempt_failed" in text and "call_crashed" in text and "RuntimeError" in text
    for line in log_file.read_text(encoding="utf-8").splitlines():
        json.loads(line)  # still one JSON object per line


def test_every_endpoints_key_is_scrubbed(tmp_path: Path) -> None:
    """With endpoints, each may send its own key: the service's scrubber redacts all of them, and
    long header values too (a key sent as a header); a keyless local endpoint adds none."""
    config = tmp_path / "config.toml"
    config.write_text(
        '[llm]\nprovider = "openai"\napi_key_env = "KEY_ONE"\n'
        '[endpoints.two]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "KEY_TWO"\n'
        '[endpoints.local]\nkind = "openai"\nbase_url = "http://127.0.0.1:8/v1"\n'
        f'headers = {{ "api-key" = "{KEY[5:45]}", "X-Team" = "lab" }}\n'
    )
    one, two = KEY, KEY[::-1]
    scrubber = key_scrubber(load_settings(config, {}), {"KEY_ONE": one, "KEY_TWO": two})
    text = scrubber.text(f"first {one}, second {two[:16]}****, header {KEY[5:45]}")
    assert one[10:30] not in text and two[:16] not in text and KEY[20:40] not in text
    assert text.count(REDACTED) == 3
    assert scrubber.text("nothing secret here") == "nothing secret here"
