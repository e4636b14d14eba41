"""Higher-order (attribute-attribute-object) annotations of a dataset, as in the CSP paper.

A dataset folder may hold ``aao/annotations.csv`` with columns ``image,attr,attr2,obj``:
``image`` is relative to ``images/``, ``attr``/``obj`` is the image's dataset pair and
``attr2`` a second attribute (from annotators for AAO-MIT-States, rendered for the
synthetic datasets). Every name must be in the dataset's vocabulary, because the learned
methods (CSP, CoOp) only have rows for those names. The candidates of the evaluation are
the distinct ``(attr, attr2, obj)`` triples of the file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from bench.data.czsl import IMAGES_DIR, CZSLDataset, Sample
from bench.errors import BenchError

#: The annotations file, relative to a dataset folder.
ANNOTATIONS_FILE = Path("aao") / "annotations.csv"
#: Columns of the annotations file, in order.
COLUMNS: tuple[str, ...] = ("image", "attr", "attr2", "obj")
#: Name of the extra feature split holding the annotated images.
SPLIT = "aao"
#: Columns of the official CSP file ``aao/193-annot.csv`` (its first column is unnamed).
OFFICIAL_COLUMNS: tuple[str, ...] = (
    "Input.image_url",
    "Input.attr",
    "Answer.ao-image-attr.label",
    "Input.obj",
)

Triple = tuple[str, str, str]


@dataclass(frozen=True)
class TripleSample:
    """One image described by two attributes and an object.

    Attributes:
        image: Path relative to ``<root>/images``.
        attr: The dataset attribute of the image (first in the prompt).
        attr2: The second attribute.
        obj: The object.
    """

    image: str
    attr: str
    attr2: str
    obj: str

    @property
    def triple(self) -> Triple:
        """``(attr, attr2, obj)``."""
        return (self.attr, self.attr2, self.obj)


def higher_order_downloads() -> dict[str, str]:
    """``{download name: dataset card name}`` of every card with a ``[higher_order]`` table."""
    from bench.cards import card_names, load_card

    out = {}
    for name in card_names("datasets"):
        table = load_card("datasets", name).get("higher_order")
        if isinstance(table, dict) and table.get("name"):
            out[str(table["name"])] = name
    return out


def annotations_path(root: Path) -> Path:
    """Path of the annotations file under a dataset folder ``root``."""
    return Path(root) / ANNOTATIONS_FILE


def distinct_triples(samples: Iterable[TripleSample]) -> tuple[Triple, ...]:
    """The sorted distinct ``(attr, attr2, obj)`` triples of ``samples`` (the candidates)."""
    return tuple(sorted({sample.triple for sample in samples}))


def check_samples(samples: Sequence[TripleSample], dataset: CZSLDataset, source: str) -> None:
    """Raise a one-line BenchError on a name outside the vocabulary or a missing image.

    Args:
        samples: The annotations.
        dataset: The dataset they belong to.
        source: What the samples were read from (named in the message).
    """
    attrs, objs = set(dataset.attrs), set(dataset.objs)
    unknown_attrs = sorted(
        {name for s in samples for name in (s.attr, s.attr2) if name not in attrs}
    )
    unknown_objs = sorted({s.obj for s in samples if s.obj not in objs})
    if unknown_attrs or unknown_objs:
        parts = []
        if unknown_attrs:
            parts.append(f"attributes {', '.join(map(repr, unknown_attrs))}")
        if unknown_objs:
            parts.append(f"objects {', '.join(map(repr, unknown_objs))}")
        raise BenchError(
            f"{source} names {' and '.join(parts)}, which are not in dataset {dataset.name}'s "
            "vocabulary; fix the file or remove those rows"
        )
    images = Path(dataset.root) / IMAGES_DIR
    missing = [s.image for s in samples if not (images / s.image).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise BenchError(
            f"{source} names image {missing[0]!r}{more}, missing under {images}; "
            "re-download the dataset or fix the file"
        )


def parse_annotations(text: str, source: str) -> tuple[TripleSample, ...]:
    """Parse the text of an annotations file (no vocabulary check).

    Raises:
        BenchError: Wrong header, a row without four non-empty fields, or no rows.
    """
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != COLUMNS:
        raise BenchError(f"{source}: the header must be {','.join(COLUMNS)} (got {header})")
    samples = []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        fields = [field.strip() for field in row]
        if len(fields) != len(COLUMNS) or not all(fields):
            raise BenchError(f"{source}:{lineno}: expected four non-empty fields, got {row}")
        samples.append(TripleSample(*fields))
    if not samples:
        raise BenchError(f"{source} holds no annotations; remove it or add rows")
    return tuple(samples)


def load_annotations(dataset: CZSLDataset) -> tuple[TripleSample, ...] | None:
    """The checked annotations of ``dataset``, or None when it has no annotations file.

    Raises:
        BenchError: An unreadable or malformed file, a name outside the vocabulary, or a
            missing image.
    """
    path = annotations_path(dataset.root)
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read {path} ({exc}); fix or re-download it") from None
    samples = parse_annotations(text, str(path))
    check_samples(samples, dataset, str(path))
    return samples


def format_annotations(samples: Iterable[TripleSample]) -> str:
    """The text of an annotations file (LF line endings)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for sample in samples:
        writer.writerow(dataclasses.astuple(sample))
    return out.getvalue()


def write_annotations(root: Path, samples: Iterable[TripleSample]) -> Path:
    """Write ``aao/annotations.csv`` under the dataset folder ``root`` (atomically)."""
    path = annotations_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(format_annotations(samples), encoding="utf-8")
    os.replace(tmp, path)
    return path


def convert_official(text: str, dataset: CZSLDataset, source: str) -> tuple[TripleSample, ...]:
    """Convert the official CSP ``aao/193-annot.csv`` into checked annotations.

    The prompt order of the official script is kept: ``attr`` = ``Input.attr`` (the dataset
    attribute), ``attr2`` = ``Answer.ao-image-attr.label`` (the annotator's), ``obj`` =
    ``Input.obj``.

    Raises:
        BenchError: Missing columns, an empty file, a name outside the vocabulary or a
            missing image.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in OFFICIAL_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise BenchError(
            f"{source} lacks the columns {', '.join(missing)}; is it the official "
            "aao/193-annot.csv?"
        )
    image, attr, attr2, obj = OFFICIAL_COLUMNS
    samples = tuple(
        TripleSample(row[image].strip(), row[attr].strip(), row[attr2].strip(), row[obj].strip())
        for row in reader
    )
    if not samples:
        raise BenchError(f"{source} holds no rows")
    check_samples(samples, dataset, source)
    return samples


def with_annotation_split(dataset: CZSLDataset, samples: Sequence[TripleSample]) -> CZSLDataset:
    """``dataset`` with an extra split :data:`SPLIT` of the annotated images (for features).

    The split's labels are each image's dataset pair ``(attr, obj)``.
    """
    splits = dict(dataset.splits)
    splits[SPLIT] = tuple(Sample(image=s.image, attr=s.attr, obj=s.obj) for s in samples)
    return dataclasses.replace(dataset, splits=MappingProxyType(splits))
