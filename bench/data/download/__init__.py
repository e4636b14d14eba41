"""Download MIT-States, UT-Zappos and C-GQA and unpack them into the standard CZSL layout.

One module per job: :mod:`~bench.data.download.schema` (the cards' ``[[archives]]``),
:mod:`~bench.data.download.http` (resumable transfers), :mod:`~bench.data.download.archive`
(safe extraction), :mod:`~bench.data.download.utzappos` (pair folders) and
:mod:`~bench.data.download.recipes` (:func:`download_dataset`, which runs them in order).

Result, under ``<root>/<card folder>``::

    images/...                                   # pair folders (MIT, UT) or flat (C-GQA)
    compositional-split-natural/{train,val,test}_pairs.txt
    metadata_compositional-split-natural.t7
    .bench-download.json                         # what was fetched, from where, its sha256

Archives are downloaded (resumably, HTTP ``Range``) into ``<root>/downloads/``; an archive
placed by hand in ``<root>/<folder>/`` or ``<root>/downloads/`` is used instead. Every archive
is checked against the sha256 in its card, or, where upstream publishes none, against the
value recorded in ``.bench-download.json`` the first time it was fetched. Extraction refuses
unsafe members and happens in a temporary folder inside the dataset folder, moved into place
only once complete.

URL overrides (tests, local mirrors), highest precedence first:

* ``urls_override={"<archive filename or role>": url_or_urls}`` passed to
  :func:`download_dataset`;
* the environment variable ``BENCH_DOWNLOAD_BASE_URL``: every archive is fetched from
  ``$BENCH_DOWNLOAD_BASE_URL/<archive filename>`` (instead of the card's URLs).
"""

from __future__ import annotations

from bench.data.download.archive import safe_extract
from bench.data.download.http import DownloadOptions, DownloadResult, download_file
from bench.data.download.recipes import RECORD_FILE, dataset_is_complete, download_dataset
from bench.data.download.schema import (
    ENV_BASE_URL,
    ArchiveSpec,
    ExtractSpec,
    archive_specs,
    resolve_urls,
)
from bench.data.download.utzappos import reorganize_utzappos

__all__ = [
    "ENV_BASE_URL",
    "RECORD_FILE",
    "ArchiveSpec",
    "DownloadOptions",
    "DownloadResult",
    "ExtractSpec",
    "archive_specs",
    "dataset_is_complete",
    "download_dataset",
    "download_file",
    "reorganize_utzappos",
    "resolve_urls",
    "safe_extract",
]
