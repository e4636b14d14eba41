"""The ``grid`` fixture of the bench.report tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_fixtures import write_grid


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """A results dir with the fixture grid: clip and csp on mit-states and ut-zappos, 3 seeds."""
    write_grid(tmp_path)
    return tmp_path
