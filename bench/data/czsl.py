"""Reading CZSL datasets in the standard on-disk format (the one czsl and the CSP code use).

Layout of a dataset folder::

    <root>/images/...                                        # image files
    <root>/compositional-split-natural/{train,val,test}_pairs.txt   # one "attr obj" per line
    <root>/metadata_compositional-split-natural.t7           # torch.save'd list of dicts

Rules (shared with the reference loaders):

* attributes and objects are the sorted unique names over the three pair files;
* the closed world is the sorted union of the three pair files; each split's pairs keep
  their file order (duplicates dropped);
* the open world is every attribute x object, attribute-major;
* metadata rows whose attr or set is ``NA``, or whose pair is not a closed-world pair, are
  skipped; a split's images are never filtered by that split's pair file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from bench.constants import DATA_SPLITS, WORLD_NAMES
from bench.errors import BenchError

Pair = tuple[str, str]

SPLIT_DIR = "compositional-split-natural"
METADATA_FILE = "metadata_compositional-split-natural.t7"
IMAGES_DIR = "images"
REQUIRED_KEYS: tuple[str, ...] = ("image", "attr", "obj", "set")
GENERATOR_FILE = "generator.json"  # written by bench.data.synthetic


def pair_file(root: Path, split: str) -> Path:
    """Path of ``split``'s pair file under a dataset folder ``root``."""
    return Path(root) / SPLIT_DIR / f"{split}_pairs.txt"


def metadata_file(root: Path) -> Path:
    """Path of the metadata file under a dataset folder ``root``."""
    return Path(root) / METADATA_FILE


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        image: Path relative to ``<root>/images``.
        attr: Attribute name.
        obj: Object name.
    """

    image: str
    attr: str
    obj: str


@dataclass(frozen=True)
class CZSLDataset:
    """A loaded CZSL dataset: vocabulary, pair sets and the samples of each split.

    Attributes:
        name: Registered name, or the folder name for a dataset given by path.
        root: The dataset folder.
        attrs: Sorted attribute names.
        objs: Sorted object names.
        pairs: Closed-world pairs (sorted union of the three pair files).
        train_pairs: Pairs of ``train_pairs.txt`` in file order (the seen pairs).
        val_pairs: Pairs of ``val_pairs.txt`` in file order (seen and unseen).
        test_pairs: Pairs of ``test_pairs.txt`` in file order (seen and unseen).
        splits: Samples per split, keys ``"train"``, ``"val"``, ``"test"``.
        fingerprint: sha256 over the bytes of the pair files and the metadata file (and of
            ``generator.json`` for generated datasets); feature caches key on it.
    """

    name: str
    root: Path
    attrs: tuple[str, ...]
    objs: tuple[str, ...]
    pairs: tuple[Pair, ...]
    train_pairs: tuple[Pair, ...]
    val_pairs: tuple[Pair, ...]
    test_pairs: tuple[Pair, ...]
    splits: Mapping[str, tuple[Sample, ...]]
    fingerprint: str

    def __hash__(self) -> int:
        return hash((self.name, str(self.root), self.fingerprint))

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # mappingproxy cannot be pickled (DataLoader workers, multiprocessing): send a dict.
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        values[[f.name for f in dataclasses.fields(self)].index("splits")] = dict(self.splits)
        return _rebuild_dataset, tuple(values)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={len(self.splits[split])}" for split in DATA_SPLITS)
        return (
            f"CZSLDataset(name={self.name!r}, root={str(self.root)!r}, attrs={len(self.attrs)}, "
            f"objs={len(self.objs)}, pairs={len(self.pairs)}, {sizes})"
        )

    @functools.cached_property
    def attr_to_id(self) -> Mapping[str, int]:
        """Attribute name -> index into ``attrs``."""
        return MappingProxyType({name: i for i, name in enumerate(self.attrs)})

    @functools.cached_property
    def obj_to_id(self) -> Mapping[str, int]:
        """Object name -> index into ``objs``."""
        return MappingProxyType({name: i for i, name in enumerate(self.objs)})

    def _check_split(self, split: str) -> None:
        if split not in DATA_SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {DATA_SPLITS}")

    def split_pairs(self, split: str) -> tuple[Pair, ...]:
        """The pairs of ``split``'s pair file, in file order."""
        self._check_split(split)
        return {"train": self.train_pairs, "val": self.val_pairs, "test": self.test_pairs}[split]

    def open_world_pairs(self) -> tuple[Pair, ...]:
        """Every attribute x object pair, attribute-major."""
        return tuple((a, o) for a in self.attrs for o in self.objs)

    def pair_ids(self, pairs: Sequence[Pair]) -> np.ndarray:
        """Map pairs of names to a ``(len(pairs), 2)`` int64 array of (attr id, obj id)."""
        a2i, o2i = self.attr_to_id, self.obj_to_id
        out = np.empty((len(pairs), 2), dtype=np.int64)
        for row, (attr, obj) in enumerate(pairs):
            out[row, 0] = a2i[attr]
            out[row, 1] = o2i[obj]
        return out

    def candidate_pairs(self, world: str) -> np.ndarray:
        """Candidate pairs as a ``(P, 2)`` int64 array of (attr id, obj id).

        Args:
            world: ``"closed"`` (``self.pairs``) or ``"open"`` (all attr x obj, attr-major).
        """
        if world == "closed":
            return self.pair_ids(self.pairs)
        if world == "open":
            n_attrs, n_objs = len(self.attrs), len(self.objs)
            attr_ids = np.repeat(np.arange(n_attrs, dtype=np.int64), n_objs)
            obj_ids = np.tile(np.arange(n_objs, dtype=np.int64), n_attrs)
            return np.stack([attr_ids, obj_ids], axis=1)
        raise ValueError(f"unknown world {world!r}; expected one of {tuple(WORLD_NAMES.values())}")

    def candidate_mask(self, split: str, world: str) -> np.ndarray | None:
        """Which candidates may be predicted when evaluating ``split``.

        Returns:
            For ``"closed"``, a bool ``(P,)`` array over ``self.pairs`` that is True for the
            train pairs and the pairs of ``split``'s pair file; for ``"open"``, None (every
            candidate is allowed).
        """
        self._check_split(split)
        if world == "open":
            return None
        if world != "closed":
            raise ValueError(
                f"unknown world {world!r}; expected one of {tuple(WORLD_NAMES.values())}"
            )
        allowed = set(self.train_pairs) | set(self.split_pairs(split))
        return np.fromiter(
            (pair in allowed for pair in self.pairs), dtype=bool, count=len(self.pairs)
        )

    def seen_pairs_ids(self) -> np.ndarray:
        """The train pairs as a ``(S, 2)`` int64 array of (attr id, obj id), in file order."""
        return self.pair_ids(self.train_pairs)

    def labels(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Attribute ids and object ids (int64) of ``split``'s samples, in sample order.

        ``split`` may also be an extra split of ``splits`` (e.g. annotated images).
        """
        if split not in self.splits:
            self._check_split(split)
        samples = self.splits[split]
        a2i, o2i = self.attr_to_id, self.obj_to_id
        attr_ids = np.fromiter((a2i[s.attr] for s in samples), dtype=np.int64, count=len(samples))
        obj_ids = np.fromiter((o2i[s.obj] for s in samples), dtype=np.int64, count=len(samples))
        return attr_ids, obj_ids

    def image_path(self, sample: Sample) -> Path:
        """Absolute path of ``sample``'s image file."""
        return self.root / IMAGES_DIR / sample.image


def _rebuild_dataset(*values: object) -> CZSLDataset:
    names = [f.name for f in dataclasses.fields(CZSLDataset)]
    kwargs = dict(zip(names, values, strict=True))
    kwargs["splits"] = MappingProxyType(dict(kwargs["splits"]))  # type: ignore[call-overload]
    return CZSLDataset(**kwargs)  # type: ignore[arg-type]


def read_pair_file(path: Path) -> tuple[Pair, ...]:
    """Read one pair file: one ``attr obj`` per line, blank lines ignored, duplicates dropped.

    Raises:
        BenchError: the file is missing or unreadable, a line does not hold exactly two
            whitespace-separated names, or the file holds no pairs.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchError(
            f"missing pair file {path}; a dataset folder needs {SPLIT_DIR}/"
            "{train,val,test}_pairs.txt (re-download or re-prepare the dataset)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read pair file {path} ({exc}); fix or re-download it") from exc
    pairs: dict[Pair, None] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2:
            raise BenchError(
                f"{path}:{lineno}: malformed pair line {line.strip()!r}; expected two "
                "whitespace-separated names 'attr obj'"
            )
        pairs[(tokens[0], tokens[1])] = None
    if not pairs:
        raise BenchError(f"pair file {path} holds no pairs; the split is empty, fix the file")
    return tuple(pairs)


def _read_metadata(path: Path) -> tuple[bytes, list[dict[str, str]]]:
    """Return the metadata file's bytes and its rows, loaded with ``weights_only=True``."""
    if not path.is_file():
        raise BenchError(f"missing metadata file {path}; re-download or re-prepare the dataset")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BenchError(f"cannot read metadata file {path} ({exc})") from exc
    import torch  # heavy: only when a dataset is actually loaded

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for users
            warnings.simplefilter("ignore", UserWarning)
            rows = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # any failure means a bad or unsafe file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(
            f"metadata file {path} cannot be loaded safely (torch.load weights_only=True: "
            f"{first_line[:200]}); it must be a torch.save'd list of dicts of strings, "
            "re-download or re-prepare the dataset"
        ) from exc
    if not isinstance(rows, list):
        raise BenchError(
            f"metadata file {path} holds a {type(rows).__name__}, not a list of dicts; "
            "re-download or re-prepare the dataset"
        )
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or any(
            not isinstance(row.get(key), str) for key in REQUIRED_KEYS
        ):
            raise BenchError(
                f"metadata file {path}: row {index} is not a dict with string keys "
                f"{', '.join(REQUIRED_KEYS)} (got {str(row)[:120]}); re-download or "
                "re-prepare the dataset"
            )
    return data, rows


def _fingerprint(parts: Sequence[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for label, data in parts:
        digest.update(label.encode())
        digest.update(b"\0")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def check_layout(root: Path) -> Path:
    """Raise a BenchError unless ``root`` looks like a dataset folder; return it."""
    root = Path(root)
    if not root.is_dir():
        raise BenchError(f"dataset folder {root} does not exist; check the path or --root")
    if not (root / SPLIT_DIR).is_dir():
        raise BenchError(
            f"dataset folder {root} has no {SPLIT_DIR}/ folder; it is not in the standard "
            "CZSL format (re-download or re-prepare it)"
        )
    return root


def load_dataset(path: Path, name: str | None = None) -> CZSLDataset:
    """Load a dataset folder in the standard format.

    Image files are not opened or checked here (see ``bench.data.verify``).

    Args:
        path: The dataset folder.
        name: The dataset's name; defaults to the folder name.

    Raises:
        BenchError: missing folder, pair file or metadata; malformed pair line; unsafe or
            malformed metadata; an empty split; an attribute or object without a
            training image.
    """
    root = check_layout(Path(path))
    split_pairs: dict[str, tuple[Pair, ...]] = {}
    parts: list[tuple[str, bytes]] = []
    for split in DATA_SPLITS:
        file = pair_file(root, split)
        split_pairs[split] = read_pair_file(file)
        parts.append((file.name, file.read_bytes()))
    meta_path = metadata_file(root)
    meta_bytes, rows = _read_metadata(meta_path)
    parts.append((meta_path.name, meta_bytes))
    generator = root / GENERATOR_FILE  # synthetic datasets: image size etc. change the images
    if generator.is_file():
        parts.append((generator.name, generator.read_bytes()))

    union = {pair for pairs in split_pairs.values() for pair in pairs}
    pairs = tuple(sorted(union))
    attrs = tuple(sorted({a for a, _ in union}))
    objs = tuple(sorted({o for _, o in union}))

    samples: dict[str, list[Sample]] = {split: [] for split in DATA_SPLITS}
    for row in rows:
        attr, obj, split = row["attr"], row["obj"], row["set"]
        if attr == "NA" or split == "NA" or split not in samples or (attr, obj) not in union:
            continue
        samples[split].append(Sample(image=row["image"], attr=attr, obj=obj))

    for split in DATA_SPLITS:
        if not samples[split]:
            raise BenchError(
                f"metadata file {meta_path} has no usable {split!r} images (rows with set "
                f"{split!r} whose pair is in the pair files); the split is empty, fix the "
                "metadata or the pair files"
            )
    train_attrs = {s.attr for s in samples["train"]}
    train_objs = {s.obj for s in samples["train"]}
    for kind, names, present, position in (
        ("attribute", attrs, train_attrs, 0),
        ("object", objs, train_objs, 1),
    ):
        for missing in (n for n in names if n not in present):
            where = next(
                split
                for split in DATA_SPLITS
                if any(p[position] == missing for p in split_pairs[split])
            )
            raise BenchError(
                f"{pair_file(root, where)} names {kind} {missing!r}, which has no training "
                f"image in {meta_path}; remove the pairs with {missing!r} or add training images"
            )

    return CZSLDataset(
        name=name if name is not None else root.name,
        root=root,
        attrs=attrs,
        objs=objs,
        pairs=pairs,
        train_pairs=split_pairs["train"],
        val_pairs=split_pairs["val"],
        test_pairs=split_pairs["test"],
        splits=MappingProxyType({split: tuple(samples[split]) for split in DATA_SPLITS}),
        fingerprint=_fingerprint(parts),
    )


def describe(ds: CZSLDataset) -> dict[str, object]:
    """Counts of a dataset, in the shape of a card's ``[counts]`` table.

    Returns:
        ``{"attrs", "objs", "pairs", "open_world_pairs", "train", "val", "test"}``; each
        split holds ``images``, ``seen_pairs`` and ``unseen_pairs`` (the pairs of the
        split's pair file that are / are not train pairs).
    """
    train = set(ds.train_pairs)
    out: dict[str, object] = {
        "attrs": len(ds.attrs),
        "objs": len(ds.objs),
        "pairs": len(ds.pairs),
        "open_world_pairs": len(ds.attrs) * len(ds.objs),
    }
    for split in DATA_SPLITS:
        split_pairs = ds.split_pairs(split)
        seen = sum(pair in train for pair in split_pairs)
        out[split] = {
            "images": len(ds.splits[split]),
            "seen_pairs": seen,
            "unseen_pairs": len(split_pairs) - seen,
        }
    return out
