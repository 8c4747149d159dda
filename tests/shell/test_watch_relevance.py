"""Which changes under ``data/cohorts`` ask for a rebuild: spec folders only, never outputs."""

from __future__ import annotations

import pytest

from daydreamd.daemon.watcher import spec_relevant

ROOT = "/srv/exp/data/cohorts"


@pytest.mark.parametrize(
    ("path", "relevant"),
    [
        (f"{ROOT}/rejudge", True),  # a cohort folder created, moved or removed
        (f"{ROOT}/rejudge/spec", True),
        (f"{ROOT}/rejudge/spec/config.yaml", True),
        (f"{ROOT}/rejudge/spec/items/top.csv", True),
        (f"{ROOT}/rejudge/membership.csv", False),  # what the service writes beside spec/
        (f"{ROOT}/rejudge/manifest.json", False),
        (f"{ROOT}/cohort_0123456789ab/membership.csv", False),
        (f"{ROOT}/rejudge/reports/report.html", False),
        (f"{ROOT}/rejudge/spec/.config.yaml.swp", False),  # editor temp files
        (f"{ROOT}/.tmp-cohort", False),
    ],
)
def test_only_spec_folders_count(path: str, relevant: bool) -> None:
    assert spec_relevant(ROOT, path) is relevant
