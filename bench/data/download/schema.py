"""The ``[[archives]]`` schema of a downloadable dataset card, and where each archive comes from."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from bench.errors import BenchError

#: Every archive is fetched from ``$BENCH_DOWNLOAD_BASE_URL/<archive filename>`` when set.
ENV_BASE_URL = "BENCH_DOWNLOAD_BASE_URL"


@dataclass(frozen=True)
class ExtractSpec:
    """How one archive is unpacked into the dataset folder.

    Attributes:
        member_prefix: Archive folder to take (stripped from member names). When no member
            starts with it, the whole archive is taken as is.
        into: Folder under the dataset folder that receives the members (``"."``: itself).
        spaces_to_underscores: Replace spaces in folder names by ``_`` (MIT-States).
        reorganize: Post-processing step; ``"utzappos"`` builds ``images/<attr>_<obj>/``.
    """

    member_prefix: str = ""
    into: str = "."
    spaces_to_underscores: bool = False
    reorganize: str = ""


@dataclass(frozen=True)
class ArchiveSpec:
    """One ``[[archives]]`` entry of a dataset card.

    Attributes:
        role: What the archive provides (``images``, ``splits``, ``all``).
        filename: File name the archive is stored under.
        urls: Mirrors, tried in order.
        sha256: Expected hex sha256, or ``""`` when unknown upstream.
        extract: How to unpack it.
    """

    role: str
    filename: str
    urls: tuple[str, ...]
    sha256: str = ""
    extract: ExtractSpec = field(default_factory=ExtractSpec)

    @classmethod
    def from_card(cls, entry: Mapping[str, Any], card_name: str) -> ArchiveSpec:
        """Build a spec from a card's ``[[archives]]`` table, or raise a one-line BenchError."""
        where = f"dataset card {card_name!r}"
        filename = entry.get("filename")
        urls = entry.get("urls", [])
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(filename, str) or not filename or "/" in filename or "\\" in filename:
            raise BenchError(f"{where}: an [[archives]] entry needs a plain 'filename'")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise BenchError(f"{where}: archive {filename}: 'urls' must be a list of strings")
        sha = str(entry.get("sha256", "") or "").strip().lower()
        if sha and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise BenchError(f"{where}: archive {filename}: 'sha256' is not 64 hex digits")
        raw = entry.get("extract", {}) or {}
        if not isinstance(raw, Mapping):
            raise BenchError(f"{where}: archive {filename}: 'extract' must be a table")
        into = str(raw.get("into", ".") or ".")
        into_parts = PurePosixPath(into).parts
        if into.startswith("/") or ".." in into_parts:
            raise BenchError(f"{where}: archive {filename}: 'into' must stay inside the folder")
        reorganize = str(raw.get("reorganize", "") or "")
        if reorganize not in ("", "utzappos"):
            raise BenchError(f"{where}: archive {filename}: unknown reorganize {reorganize!r}")
        extract = ExtractSpec(
            member_prefix=str(raw.get("member_prefix", "") or ""),
            into=into,
            spaces_to_underscores=bool(raw.get("spaces_to_underscores", False)),
            reorganize=reorganize,
        )
        return cls(
            role=str(entry.get("role", "")),
            filename=filename,
            urls=tuple(urls),
            sha256=sha,
            extract=extract,
        )


def archive_specs(card: Mapping[str, Any]) -> list[ArchiveSpec]:
    """Return the ``[[archives]]`` entries of a dataset card as specs."""
    name = str(card.get("name", "?"))
    entries = card.get("archives") or []
    if not isinstance(entries, list) or not entries:
        raise BenchError(f"dataset card {name!r} has no [[archives]] to download")
    return [ArchiveSpec.from_card(entry, name) for entry in entries]


def resolve_urls(
    spec: ArchiveSpec, urls_override: Mapping[str, str | Sequence[str]] | None = None
) -> tuple[str, ...]:
    """Return the URLs to try for ``spec``: override, then ``BENCH_DOWNLOAD_BASE_URL``, then card."""
    if urls_override:
        for key in (spec.filename, spec.role):
            if key in urls_override:
                value = urls_override[key]
                return (value,) if isinstance(value, str) else tuple(value)
    base = os.environ.get(ENV_BASE_URL, "").strip()
    if base:
        return (f"{base.rstrip('/')}/{spec.filename}",)
    return spec.urls
