"""Declarative cards: one TOML file per dataset (``datasets/``) and per method (``methods/``).

The folders live at the repository top level (they are not Python packages, so they never
shadow Hugging Face ``datasets``). A wheel install carries copies under ``bench/_cards``.
"""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path
from typing import Any

from bench.errors import BenchError

_PACKAGE_DIR = Path(__file__).resolve().parent


def cards_dir(kind: str) -> Path:
    """Return the folder holding the ``kind`` cards (``"datasets"`` or ``"methods"``).

    ``BENCH_CARDS_DIR`` overrides the location (it must contain ``datasets/`` and ``methods/``).
    """
    if kind not in ("datasets", "methods"):
        raise ValueError(f"unknown card kind {kind!r}")
    override = os.environ.get("BENCH_CARDS_DIR")
    candidates = [Path(override) / kind] if override else []
    candidates += [_PACKAGE_DIR.parent / kind, _PACKAGE_DIR / "_cards" / kind]
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.toml")):
            return candidate
    raise BenchError(
        f"cannot find the {kind}/ card folder (looked in {', '.join(map(str, candidates))}); "
        "reinstall the package or set BENCH_CARDS_DIR"
    )


@functools.cache
def _load_all(kind: str) -> dict[str, dict[str, Any]]:
    cards: dict[str, dict[str, Any]] = {}
    for path in sorted(cards_dir(kind).glob("*.toml")):
        with open(path, "rb") as handle:
            try:
                card = tomllib.load(handle)
            except tomllib.TOMLDecodeError as exc:
                raise BenchError(f"{path}: invalid TOML ({exc}); fix the card") from exc
        card.setdefault("name", path.stem)
        cards[card["name"]] = card
    return cards


def card_names(kind: str) -> list[str]:
    """Names of all cards of ``kind``, sorted."""
    return sorted(_load_all(kind))


def load_card(kind: str, name: str) -> dict[str, Any]:
    """Return the card ``name`` of ``kind`` as a dict, or raise a one-line BenchError."""
    cards = _load_all(kind)
    if name not in cards:
        raise BenchError(f"unknown {kind[:-1]} {name!r}; known: {', '.join(sorted(cards))}")
    return cards[name]
