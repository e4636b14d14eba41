"""Declarative cards: one TOML file per dataset (``datasets/``) and per method (``methods/``).

The folders live at the repository top level (they are not Python packages, so they never
shadow Hugging Face ``datasets``). A wheel install carries copies under ``bench/_cards``.
A method added by an installed package (an entry point in ``METHOD_PLUGIN_GROUP``) ships
its card next to the entry point's module, as ``<name>.toml``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import tomllib
from pathlib import Path
from typing import Any

from bench.errors import BenchError

_PACKAGE_DIR = Path(__file__).resolve().parent
#: Entry-point group of methods from other packages: ``name = "module:Class"``.
METHOD_PLUGIN_GROUP = "czsl_bench.methods"


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


def _read_card(path: Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        try:
            card = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise BenchError(f"{path}: invalid TOML ({exc}); fix the card") from exc
    card.setdefault("name", path.stem)
    return card


@functools.cache
def _load_all(kind: str) -> dict[str, dict[str, Any]]:
    cards: dict[str, dict[str, Any]] = {}
    for path in sorted(cards_dir(kind).glob("*.toml")):
        card = _read_card(path)
        cards[card["name"]] = card
    return cards


def method_plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed method plugins (entry points of ``METHOD_PLUGIN_GROUP``) by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=METHOD_PLUGIN_GROUP)}


def plugin_card_path(entry_point: importlib.metadata.EntryPoint) -> Path:
    """Where a method plugin's card must be: ``<name>.toml`` next to its module.

    The module is located without being imported (its parent packages are).

    Raises:
        BenchError: The module cannot be found.
    """
    try:
        spec = importlib.util.find_spec(entry_point.module)
    except (ImportError, ValueError) as exc:
        spec, reason = None, f"{type(exc).__name__}: {exc}"
    else:
        reason = "no such module"
    if spec is None or not spec.origin:
        raise BenchError(
            f"method plugin {entry_point.name!r} ({entry_point.value}) cannot be found "
            f"({reason}); reinstall the package that provides it"
        )
    return Path(spec.origin).resolve().parent / f"{entry_point.name}.toml"


@functools.cache
def _plugin_card(name: str) -> dict[str, Any] | None:
    entry_point = method_plugins().get(name)
    if entry_point is None:
        return None
    path = plugin_card_path(entry_point)
    if not path.is_file():
        raise BenchError(
            f"method plugin {name!r} ({entry_point.value}) ships no card: expected {path}"
        )
    card = _read_card(path)
    if card["name"] != name:
        raise BenchError(f"{path}: card name {card['name']!r} is not the plugin's name {name!r}")
    return card


def card_names(kind: str) -> list[str]:
    """Names of the cards of ``kind`` in the card folder, sorted (plugin cards not included)."""
    return sorted(_load_all(kind))


def load_card(kind: str, name: str) -> dict[str, Any]:
    """Return the card ``name`` of ``kind`` as a dict, or raise a one-line BenchError.

    A method that is not in the card folder is looked up among the method plugins.
    """
    cards = _load_all(kind)
    if name in cards:
        return cards[name]
    plugin = _plugin_card(name) if kind == "methods" else None
    if plugin is None:
        raise BenchError(f"unknown {kind[:-1]} {name!r}; known: {', '.join(sorted(cards))}")
    return plugin
