"""The pins in ``requirements/`` agree with ``pyproject.toml``: what deployments install is what
the lower bounds allow, every direct dependency is pinned by hash, and known-bad releases are out."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", re.MULTILINE)


def pins(name: str) -> dict[str, Version]:
    text = (ROOT / "requirements" / name).read_text()
    found = {canonicalize_name(n): Version(v) for n, v in PIN.findall(text)}
    blocks = text.split("==")[1:]
    assert all("--hash=sha256:" in block for block in blocks), f"{name}: a pin without a hash"
    return found


def requirements(extra: str | None) -> list[Requirement]:
    listed = PROJECT["dependencies"] + (PROJECT["optional-dependencies"][extra] if extra else [])
    return [Requirement(r) for r in listed]


@pytest.mark.parametrize(("lock", "extra"), [("service.txt", None), ("test.txt", "test")])
def test_every_dependency_is_pinned_within_its_bounds(lock: str, extra: str | None) -> None:
    pinned = pins(lock)
    for requirement in requirements(extra):
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not pinned in requirements/{lock}"
        assert requirement.specifier.contains(version), f"{requirement.name}=={version} outside {requirement}"


def test_the_pinned_jinja2_has_no_known_sandbox_escape() -> None:
    """CVE-2025-27516 (|attr("format")) is fixed in 3.1.6; the floor and both pins must be past it."""
    (jinja,) = [r for r in requirements(None) if r.name == "jinja2"]
    assert not jinja.specifier.contains(Version("3.1.5"))
    assert all(pins(lock)["jinja2"] >= Version("3.1.6") for lock in ("service.txt", "test.txt"))


def test_the_service_pins_carry_no_test_tools() -> None:
    assert not {"pytest", "mypy", "ruff", "hypothesis"} & set(pins("service.txt"))
