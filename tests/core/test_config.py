"""config.toml: defaults, relative paths, strict keys and types, the DD_COHORT override."""

from __future__ import annotations

from pathlib import Path

import pytest

from daydreamd.core.config import load_settings
from daydreamd.core.errors import ConfigError
from daydreamd.core.stages import Stage

ROOT = Path(__file__).parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sub" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    """The service behaves the same whatever the cwd: paths are anchored at the config file."""
    settings = load_settings(write(tmp_path, '[paths]\ndata_dir = "d"\nsocket = "../s.sock"\n'), {})
    assert settings.paths.data_dir == (tmp_path / "sub" / "d").resolve()
    assert settings.paths.socket == (tmp_path / "s.sock").resolve()
    assert settings.raw_dir == settings.paths.data_dir / "1_raw"


def test_stage_defaults_and_overrides(tmp_path: Path) -> None:
    """Drafts default to min_lines 3 and failing on truncation; a stage table overrides one key only."""
    settings = load_settings(write(tmp_path, "[stages.essay]\nmax_tokens = 100\ntemperature = 1\n"), {})
    assert settings.stage(Stage.DRAFT).min_lines == 3
    assert settings.stage(Stage.DRAFT).on_truncation == "fail"
    essay = settings.stage(Stage.ESSAY)
    assert (essay.max_tokens, essay.temperature, essay.on_truncation) == (100, 1.0, "accept")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[experimnt]\nk_max = 2\n", "experimnt"),
        ("[experiment]\nkmax = 2\n", "experiment.kmax"),
        ('[experiment]\nk_max = "2"\n', "experiment.k_max"),
        ("[experiment]\nk_max = 0\n", "experiment.k_max"),
        ('[experiment]\ndescription_level = "essay"\n', "experiment.description_level"),
        # An unknown llm.provider is the LLM layer's to reject (tests/shell/test_llm.py).
        ("[stages.drafts]\nmax_tokens = 1\n", "stages.drafts"),
        ("[stages.draft]\nmax_tokens = true\n", "stages.draft.max_tokens"),
        ('[stages.draft]\non_truncation = "retry"\n', "stages.draft.on_truncation"),
        ("[paths]\ndata_dir = 3\n", "paths.data_dir"),
        ("[render]\ntimeout_s = 0\n", "render.timeout_s"),
        ("[render]\ntimeout_s = 3600\n", "render.timeout_s"),
        ("[render]\nmax_bytes = 100000000000\n", "render.max_bytes"),
        ("[render]\nmemory_mb = 16\n", "render.memory_mb"),
        ("[render]\nworkers = 0\n", "render.workers"),
        ("[render]\ntimeout = 2\n", "render.timeout"),
        ('[endpoints.llm]\nbase_url = "http://x/v1"\n', "endpoints.llm"),
        ('[endpoints.a]\nkind = "openai"\n', "endpoints.a.base_url"),
        ('[endpoints.a]\nbase_url = "http://x/v1"\nconcurrency = -1\n', "endpoints.a.concurrency"),
        ('[endpoints.a]\nbase_url = "http://x/v1"\nheaders = { X = 1 }\n', "endpoints.a.headers"),
        ('[endpoints.a]\nbase_url = "http://x/v1"\nrpm = 3\n', "endpoints.a.rpm"),
        ('[endpoints.a]\nbase_url = "http://x/v1"\nheaders = { "X Team" = "lab" }\n', "endpoints.a.headers"),
        ('[endpoints.a]\nbase_url = "http://x"\nheaders = { X = "a\\r\\nHost: x" }\n', "endpoints.a.headers"),
        ('[endpoints.a]\nbase_url = "http://x/v1"\ntimeout_s = 0\n', "endpoints.a.timeout_s"),
        ('[models.m]\nendpoints = ["nowhere"]\n', "models.m.endpoints"),
        ("[models.m]\nendpoints = []\n", "models.m.endpoints"),
        ('[models.m]\nendpoints = ["llm", "llm"]\n', "models.m.endpoints"),
        ('[models.m]\nendpoint = ["llm"]\n', "models.m.endpoint"),
        ('[endpoints.a]\nkind = "openrouter"\nbase_url = "http://x/v1"\nbatch = true\n', "endpoints.a.batch"),
        ('[endpoints.a]\nbase_url = "http://x/v1"\nbatch = "yes"\n', "endpoints.a.batch"),
        ('[endpoints.a]\nbase_url = "http://x/v1"\nbatch_discount = 0\n', "endpoints.a.batch_discount"),
        ('[endpoints.a]\nbase_url = "http://x/v1"\nbatch_discount = 1.5\n', "endpoints.a.batch_discount"),
        ("[models.m]\nbatch = true\n", "models.m.batch"),
        ("[models.m]\nbatch = 1\n", "models.m.batch"),
        ("[stages.evaluation]\nbatch = 1\n", "stages.evaluation.batch"),
        ("[batch]\nmax_requests = 50001\n", "batch.max_requests"),
        ("[batch]\npoll_s = 0\n", "batch.poll_s"),
        ('[batch]\ncompletion_window = "1d"\n', "batch.completion_window"),
        ("[batch]\ngather = 3\n", "batch.gather"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    """A typo or a wrong type is an error naming the dotted key, never a silent default."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert info.value.key == key
    assert str(path) in str(info.value)


def test_render_limits_default_and_override(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, ""), {}).render.timeout_s == 2.0
    render = load_settings(write(tmp_path, "[render]\ntimeout_s = 0.5\nmax_bytes = 2000\n"), {}).render
    assert (render.timeout_s, render.max_bytes, render.memory_mb) == (0.5, 2000, 1024)


def test_invalid_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the parser's line."""
    path = write(tmp_path, "[paths\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, {})


def test_missing_config_file(tmp_path: Path) -> None:
    """Pointing --config at nothing says so."""
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", {})


def test_env_override_beats_config(tmp_path: Path) -> None:
    """DD_COHORT wins over experiment.cohort, and a false-like value unsets it."""
    path = write(tmp_path, '[experiment]\ncohort = "from-config"\n')
    assert load_settings(path, {}).experiment.cohort == "from-config"
    assert load_settings(path, {"DD_COHORT": "from-env"}).experiment.cohort == "from-env"
    assert load_settings(path, {"DD_COHORT": "false"}).experiment.cohort is None


def test_shipped_config_loads() -> None:
    """The example config.toml is valid and points at the example experiment."""
    settings = load_settings(ROOT / "config.toml", {})
    assert settings.raw_dir == ROOT / "data" / "1_raw"


ENDPOINTS = """
[llm]
provider = "openrouter"
[endpoints.vllm-a]
kind = "openai"
base_url = "http://10.0.0.5:8000/v1"
concurrency = 8
[endpoints.vllm-b]
kind = "openai"
base_url = "http://10.0.0.6:8000/v1"
tokens_per_minute = 90000
headers = { "X-Team" = "lab" }
[endpoints.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
requests_per_minute = 500
[models.llama]
endpoints = ["vllm-a", "vllm-b"]
[models.gpt_4o]
endpoints = ["openai"]
"""


def test_endpoints_and_routes_with_llm_as_the_default(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ENDPOINTS), {})
    endpoints = settings.all_endpoints()
    assert sorted(endpoints) == ["llm", "openai", "vllm-a", "vllm-b"]
    assert endpoints["llm"].kind == "openrouter" and endpoints["llm"].api_key_env == "OPENROUTER_API_KEY"
    assert (endpoints["vllm-a"].concurrency, endpoints["vllm-a"].api_key_env) == (8, "")
    assert endpoints["vllm-b"].headers == (("X-Team", "lab"),)
    assert endpoints["openai"].requests_per_minute == 500
    assert settings.endpoints_of("llama") == ("vllm-a", "vllm-b")
    assert settings.endpoints_of("gpt_4o") == ("openai",)
    assert settings.endpoints_of("anything_else") == ("llm",)


BATCHES = """
[endpoints.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
batch = true
batch_discount = 0.4
[endpoints.local]
kind = "openai"
base_url = "http://localhost:8000/v1"
[models.gpt_4o]
endpoints = ["local", "openai"]
batch = true
[models.gpt_mini]
endpoints = ["openai"]
[models.llama]
endpoints = ["local"]
[stages.evaluation]
batch = true
[batch]
gather_s = 5
"""


def test_batch_mode_follows_the_approval_then_the_stage_and_model_never_without_a_batch_endpoint(
    tmp_path: Path,
) -> None:
    settings = load_settings(write(tmp_path, BATCHES), {})
    assert settings.batch_models == ("gpt_4o",)
    assert settings.batch.gather_s == 5.0 and settings.batch.max_requests == 10_000
    assert settings.batch_endpoints_of("gpt_4o") == ("openai",)
    assert settings.batch_endpoints_of("llama") == ()
    assert settings.all_endpoints()["openai"].batch_discount == 0.4
    runs = settings.runs_in_batch
    assert runs(Stage.DRAFT, "gpt_4o", None)  # the model's default
    assert not runs(Stage.DRAFT, "gpt_mini", None) and runs(Stage.EVALUATION, "gpt_mini", None)  # the stage's
    assert not runs(Stage.EVALUATION, "gpt_4o", False)  # --online wins
    assert runs(Stage.DRAFT, "gpt_mini", True)  # --batch wins
    assert not runs(Stage.EVALUATION, "llama", None) and not runs(Stage.EVALUATION, "llama", True)
    assert not load_settings(write(tmp_path, ""), {}).runs_in_batch(Stage.EVALUATION, "x", True)


def test_without_an_llm_section_only_routed_models_have_an_endpoint(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ENDPOINTS.replace('[llm]\nprovider = "openrouter"\n', "")), {})
    assert "llm" not in settings.all_endpoints()
    assert settings.endpoints_of("llama") == ("vllm-a", "vllm-b")
    assert settings.endpoints_of("anything_else") == ()
    # A config with neither keeps [llm]'s defaults as before endpoints existed.
    assert load_settings(write(tmp_path, ""), {}).endpoints_of("x") == ("llm",)
