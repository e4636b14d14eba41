"""Tests of bench.io.atomic_directory: a folder appears complete or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.io import atomic_directory


def _complete(folder: Path) -> bool:
    return (folder / "done").is_file()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_builds_into_place(tmp_path: Path) -> None:
    target = tmp_path / "build"
    with atomic_directory(target, is_complete=_complete) as tmp:
        assert tmp.parent == tmp_path and not target.exists()
        (tmp / "done").write_text("ours")
    assert (target / "done").read_text() == "ours"
    assert _leftovers(tmp_path) == []


def test_failure_leaves_the_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "build"
    target.mkdir()
    (target / "done").write_text("old")
    with (
        pytest.raises(RuntimeError),
        atomic_directory(target, is_complete=_complete, force=True) as tmp,
    ):
        (tmp / "done").write_text("new")
        raise RuntimeError("killed mid-build")
    assert (target / "done").read_text() == "old"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("existing", "force", "expected"),
    [
        ("old", True, "new"),  # forced rebuild replaces a complete build
        ("old", False, "old"),  # a complete twin that finished first wins
        (None, False, "new"),  # an incomplete folder is replaced
    ],
)
def test_existing_target(tmp_path: Path, existing: str | None, force: bool, expected: str) -> None:
    target = tmp_path / "build"
    target.mkdir()
    if existing is not None:
        (target / "done").write_text(existing)
    with atomic_directory(target, is_complete=_complete, force=force) as tmp:
        (tmp / "done").write_text("new")
    assert (target / "done").read_text() == expected
    assert _leftovers(tmp_path) == []


def test_incomplete_target_is_an_error_when_it_must_not_be_replaced(tmp_path: Path) -> None:
    target = tmp_path / "build"
    target.mkdir()
    (target / "someone-elses.txt").write_text("keep me")
    with (
        pytest.raises(FileExistsError),
        atomic_directory(target, is_complete=_complete, replace_incomplete=False) as tmp,
    ):
        (tmp / "done").write_text("new")
    assert (target / "someone-elses.txt").read_text() == "keep me"
    assert _leftovers(tmp_path) == []
