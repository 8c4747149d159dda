"""``systemd/daydreamd.service``: the keys the deployment relies on, and systemd's own verdict.

``systemd-analyze verify`` needs ExecStart's binary to exist, so it checks a copy whose
ExecStart points at ``/bin/true`` (ExecReload kept). It exits 0 even on unknown keys, so an
empty stderr is required too. Both systemd-analyze tests skip where the tool is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daydreamd.core.config import load_settings

ROOT = Path(__file__).parents[2]
UNIT = ROOT / "systemd" / "daydreamd.service"
DOCS = ROOT / "docs" / "systemd.md"
KEY_FILE = "/etc/daydreamd/openrouter.key"
EXEC_START = "/opt/daydreamd/.venv/bin/daydreamd --config /etc/daydreamd/config.toml"
MAX_EXPOSURE = 1.5
"""``systemd-analyze security`` rates the unit 1.2 ("OK"); a rise above this is a hardening regression."""

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered ``(key, value)`` lists (keys may repeat, as systemd allows)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {line!r}"
        assert not raw.rstrip().endswith("\\"), f"continuation lines are not used here: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=value line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(name="service", scope="module")
def _service() -> dict[str, list[str]]:
    """The [Service] section, each key with every value it was given."""
    values: dict[str, list[str]] = {}
    for key, value in parse_unit(UNIT.read_text())["Service"]:
        values.setdefault(key, []).append(value)
    return values


def one(service: dict[str, list[str]], key: str) -> str:
    assert key in service, f"{key}= is missing from {UNIT.name}"
    assert len(service[key]) == 1, f"{key}= is set {len(service[key])} times"
    return service[key][0]


def test_the_unit_is_a_notify_service_with_a_watchdog_and_reload(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "ExecStart") == EXEC_START
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"  # systemd 252 has no Type=notify-reload
    assert re.fullmatch(r"\d+(s|min)?", one(service, "WatchdogSec"))
    assert one(service, "Restart") == "on-failure"
    assert one(service, "User") == "daydreamd"


def test_the_unit_owns_its_directories(service: dict[str, list[str]]) -> None:
    assert one(service, "RuntimeDirectory") == "daydreamd"
    assert one(service, "RuntimeDirectoryMode") == "0750"  # the group reaches the 0660 socket
    assert one(service, "StateDirectory") == "daydreamd"
    assert one(service, "ReadWritePaths") == "/srv/daydreamd/data"


def test_the_unit_is_hardened(service: dict[str, list[str]]) -> None:
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "ProtectHome") == "yes"
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "PrivateTmp") == "yes"
    assert one(service, "RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]


def test_the_unit_leaves_room_for_open_files_beyond_the_socket_cap(service: dict[str, list[str]]) -> None:
    """Socket clients hold at most MAX_CONNECTIONS + IN_TRANSIT descriptors; the rest is the service's."""
    from daydreamd.daemon.connections import IN_TRANSIT, MAX_CONNECTIONS, RESERVED_FDS

    limit = one(service, "LimitNOFILE")
    assert re.fullmatch(r"\d+", limit), "one number: the same soft and hard limit"
    assert int(limit) >= 16 * (MAX_CONNECTIONS + IN_TRANSIT + RESERVED_FDS)


def test_the_api_key_comes_as_a_credential_never_as_a_variable(service: dict[str, list[str]]) -> None:
    """systemd hands the key to the service as the credential the config's llm.api_key_env names
    (read from $CREDENTIALS_DIRECTORY); no environment file or variable carries it."""
    name, _, path = one(service, "LoadCredential").partition(":")
    assert path == KEY_FILE
    found = re.search(r"```toml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert found, f"no toml block in {DOCS.name}"
    assert f'api_key_env = "{name}"' in found.group(1)
    assert "EnvironmentFile" not in service and "PassEnvironment" not in service
    assert not [value for value in service.get("Environment", []) if name in value or "KEY" in value]
    assert f"install -o root -g root -m 0600 /dev/null {KEY_FILE}" in DOCS.read_text()


def test_the_documented_config_loads_and_matches_the_unit(
    tmp_path: Path, service: dict[str, list[str]]
) -> None:
    """The config in docs/systemd.md puts each path where the unit gives write access."""
    found = re.search(r"```toml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert found, f"no toml block in {DOCS.name}"
    config = tmp_path / "config.toml"
    config.write_text(found.group(1))
    paths = load_settings(config, {}).paths
    assert str(paths.data_dir) == one(service, "ReadWritePaths")
    assert paths.state_db.parent == Path("/var/lib") / one(service, "StateDirectory")
    assert paths.socket.parent == Path("/run") / one(service, "RuntimeDirectory")
    assert paths.log_file is not None and paths.log_file.parent == Path("/var/log") / one(
        service, "LogsDirectory"
    )


@pytest.fixture(name="unit_copy")
def _unit_copy() -> Iterator[Path]:
    """The unit with ExecStart on an existing binary, under its own name in a fresh folder."""
    folder = Path(tempfile.mkdtemp(prefix="ddunit", dir="/tmp"))
    text = UNIT.read_text()
    assert f"ExecStart={EXEC_START}\n" in text
    copy = folder / UNIT.name
    copy.write_text(text.replace(f"ExecStart={EXEC_START}", "ExecStart=/bin/true --config /etc/daydreamd/x"))
    yield copy
    shutil.rmtree(folder, ignore_errors=True)


@needs_analyze
def test_systemd_analyze_verify_is_silent(unit_copy: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", str(unit_copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@needs_analyze
def test_systemd_analyze_security_rates_the_unit_ok(unit_copy: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for daydreamd\.service: (\d+\.\d+)", result.stdout)
    if found is None:
        pytest.skip(f"systemd-analyze security --offline is not supported here: {result.stderr.strip()}")
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout
