"""A deterministic synthetic CZSL dataset, written in the standard on-disk format.

Images show one coloured or patterned shape on a jittered grey background: the attribute
is a colour or pattern (``red``, ``striped``, ...), the object is a shape (``circle``,
``star``, ...). Every name is one lowercase word that is a single token of CLIP's BPE
vocabulary, so a small CLIP trained on :func:`render` images with captions made from
``SYNTHETIC_ATTRS`` / ``SYNTHETIC_OBJS`` can learn it.

Presets ``synthetic-mit-states``, ``synthetic-ut-zappos`` and ``synthetic-cgqa`` copy the
exact counts (attributes, objects, pairs and images per split) of the real datasets with
generated names (``a017``, ``o123``) and tiny images, for testing at full scale.

Presets ``synthetic`` and ``synthetic-flat`` also have higher-order compositions: extra
images (``images/aao/``, in no split) of each colour test pair with a pattern drawn over the
colour ("red striped circle"), listed in ``aao/annotations.csv`` (see
:mod:`bench.data.higher_order`). The split images are those of a preset without them.

Planning (:func:`plan_synthetic`) is separate from rendering, so the split logic can be
checked without writing images. The same ``(preset, seed, layout, image_size)`` always
gives byte-identical files.
"""

from __future__ import annotations

import colorsys
import functools
import itertools
import json
import math
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

from bench.constants import DATA_SPLITS
from bench.data.czsl import (
    GENERATOR_FILE,
    IMAGES_DIR,
    SPLIT_DIR,
    CZSLDataset,
    Pair,
    Sample,
    metadata_file,
    pair_file,
)
from bench.data.higher_order import TripleSample, write_annotations
from bench.errors import BenchError
from bench.io import atomic_directory

GENERATOR_VERSION = 2
#: Folder of the higher-order images under ``images/``, and their render stream.
HIGHER_ORDER_DIR = "aao"
HIGHER_ORDER_STREAM = 0xAA0
LAYOUTS: tuple[str, ...] = ("pair-folders", "flat")

#: Colour attributes and their RGB values.
COLOURS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 30, 30),
        "green": (30, 170, 50),
        "blue": (30, 60, 220),
        "yellow": (240, 220, 30),
        "purple": (140, 40, 190),
        "orange": (245, 140, 20),
        "pink": (250, 140, 200),
        "brown": (120, 70, 30),
        "black": (20, 20, 20),
        "white": (240, 240, 240),
    }
)
#: Pattern attributes (drawn in dark and light grey).
PATTERNS: tuple[str, ...] = ("striped", "dotted")
#: Attribute vocabulary of the ``synthetic`` dataset (colours, then patterns).
SYNTHETIC_ATTRS: tuple[str, ...] = (*COLOURS, *PATTERNS)
#: Object vocabulary of the ``synthetic`` dataset (shapes).
SYNTHETIC_OBJS: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "heart",
    "diamond",
    "moon",
    "arrow",
)


@dataclass(frozen=True)
class SyntheticPreset:
    """Sizes of a synthetic dataset.

    Attributes:
        name: Preset name (also the registered dataset name of its card).
        n_attrs: Number of attributes.
        n_objs: Number of objects.
        train_pairs: Number of train (seen) pairs; every attribute and object is in one.
        val_seen: Val pairs that are train pairs.
        val_unseen: Val pairs that are not train pairs (disjoint from test's unseen pairs).
        test_seen: Test pairs that are train pairs.
        test_unseen: Test pairs that are not train pairs.
        train_images: Train images (spread as evenly as possible over the train pairs).
        val_images: Val images (spread over the val pairs).
        test_images: Test images (spread over the test pairs).
        image_size: Side of the square RGB PNG images, in pixels.
        layout: ``"pair-folders"`` (images/<attr>_<obj>/<file>) or ``"flat"`` (images/<file>).
        vocabulary: ``"words"`` (the first names of ``SYNTHETIC_ATTRS``/``SYNTHETIC_OBJS``)
            or ``"generated"`` (``a000``..., ``o000``...).
        ut_style: Metadata rows also carry an ``_image`` key, as UT-Zappos rows do.
        skipped_rows: Extra metadata rows per kind that the loader must skip (attr ``NA``,
            set ``NA``, pair outside the closed world).
        aao_per_pattern: Extra images of each colour test pair with each pattern of the
            vocabulary as a second attribute (``aao/annotations.csv``, in no split); 0: none.
    """

    name: str
    n_attrs: int
    n_objs: int
    train_pairs: int
    val_seen: int
    val_unseen: int
    test_seen: int
    test_unseen: int
    train_images: int
    val_images: int
    test_images: int
    image_size: int = 48
    layout: str = "pair-folders"
    vocabulary: str = "words"
    ut_style: bool = False
    skipped_rows: int = 2
    aao_per_pattern: int = 0


PRESETS: Mapping[str, SyntheticPreset] = MappingProxyType(
    {
        preset.name: preset
        for preset in (
            SyntheticPreset(
                "synthetic", 12, 10, 60, 12, 12, 12, 12,
                train_images=60 * 24, val_images=24 * 8, test_images=24 * 8,
                aao_per_pattern=2,
            ),
            SyntheticPreset(
                "synthetic-flat", 12, 10, 60, 12, 12, 12, 12,
                train_images=60 * 24, val_images=24 * 8, test_images=24 * 8, layout="flat",
                aao_per_pattern=2,
            ),
            SyntheticPreset(
                "synthetic-tiny", 6, 5, 12, 4, 4, 4, 4,
                train_images=12 * 6, val_images=8 * 4, test_images=8 * 4, image_size=16,
            ),
            SyntheticPreset(
                "synthetic-mit-states", 115, 245, 1262, 300, 300, 400, 400,
                train_images=30338, val_images=10420, test_images=12995,
                image_size=8, vocabulary="generated",
            ),
            SyntheticPreset(
                "synthetic-ut-zappos", 16, 12, 83, 15, 15, 18, 18,
                train_images=22998, val_images=3214, test_images=2914,
                image_size=8, vocabulary="generated", ut_style=True,
            ),
            SyntheticPreset(
                "synthetic-cgqa", 413, 674, 5592, 1252, 1040, 888, 923,
                train_images=26920, val_images=7280, test_images=5098,
                image_size=8, layout="flat", vocabulary="generated",
            ),
        )
    }
)  # fmt: skip


@dataclass(frozen=True)
class SyntheticPlan:
    """What a synthetic dataset holds, decided before any image is rendered.

    Attributes:
        preset: The preset.
        seed: The seed.
        layout: The image layout actually used.
        attrs: Sorted attribute names.
        objs: Sorted object names.
        train_pairs: Train pair file, in file order.
        val_pairs: Val pair file (seen and unseen pairs, shuffled), in file order.
        test_pairs: Test pair file, in file order.
        images: The pair of every image of each split (keys ``train``, ``val``, ``test``).
        skipped: ``(attr, obj, set)`` of extra metadata rows the loader must skip.
        higher_order: ``(attr, attr2, obj)`` of each extra higher-order image, in order.
    """

    preset: SyntheticPreset
    seed: int
    layout: str
    attrs: tuple[str, ...]
    objs: tuple[str, ...]
    train_pairs: tuple[Pair, ...]
    val_pairs: tuple[Pair, ...]
    test_pairs: tuple[Pair, ...]
    images: Mapping[str, tuple[Pair, ...]]
    skipped: tuple[tuple[str, str, str], ...]
    higher_order: tuple[tuple[str, str, str], ...] = ()

    def split_pairs(self, split: str) -> tuple[Pair, ...]:
        """The pair file of ``split``, in file order."""
        return {"train": self.train_pairs, "val": self.val_pairs, "test": self.test_pairs}[split]

    def as_dataset(self, name: str | None = None, fingerprint: str | None = None) -> CZSLDataset:
        """The plan as an in-memory dataset, without rendering images (image paths are
        ``<split>/<index>.png`` under a root that does not exist).

        Args:
            name: Dataset name (default: the preset's).
            fingerprint: Dataset fingerprint (default: ``<name>-plan-<seed>``).
        """
        name = name or self.preset.name
        splits = {
            split: tuple(
                Sample(image=f"{split}/{i}.png", attr=a, obj=o)
                for i, (a, o) in enumerate(self.images[split])
            )
            for split in DATA_SPLITS
        }
        union = sorted(set(self.train_pairs) | set(self.val_pairs) | set(self.test_pairs))
        return CZSLDataset(
            name=name,
            root=Path("/nonexistent"),
            attrs=self.attrs,
            objs=self.objs,
            pairs=tuple(union),
            train_pairs=self.train_pairs,
            val_pairs=self.val_pairs,
            test_pairs=self.test_pairs,
            splits=MappingProxyType(splits),
            fingerprint=fingerprint or f"{name}-plan-{self.seed}",
        )

    def higher_order_triples(self) -> tuple[tuple[str, str, str], ...]:
        """The sorted distinct ``(attr, attr2, obj)`` triples of the higher-order images."""
        return tuple(sorted(set(self.higher_order)))

    def counts(self) -> dict[str, object]:
        """The counts the loaded dataset will have, in ``bench.data.czsl.describe``'s shape."""
        train = set(self.train_pairs)
        closed = train | set(self.val_pairs) | set(self.test_pairs)
        out: dict[str, object] = {
            "attrs": len(self.attrs),
            "objs": len(self.objs),
            "pairs": len(closed),
            "open_world_pairs": len(self.attrs) * len(self.objs),
        }
        for split in DATA_SPLITS:
            pairs = self.split_pairs(split)
            seen = sum(pair in train for pair in pairs)
            out[split] = {
                "images": len(self.images[split]),
                "seen_pairs": seen,
                "unseen_pairs": len(pairs) - seen,
            }
        return out


def get_preset(preset: str | SyntheticPreset) -> SyntheticPreset:
    """Return the preset called ``preset`` (or ``preset`` itself)."""
    if isinstance(preset, SyntheticPreset):
        return preset
    if preset not in PRESETS:
        raise BenchError(f"unknown synthetic preset {preset!r}; known: {', '.join(PRESETS)}")
    return PRESETS[preset]


def _vocabulary(preset: SyntheticPreset) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if preset.vocabulary == "words":
        if preset.n_attrs > len(SYNTHETIC_ATTRS) or preset.n_objs > len(SYNTHETIC_OBJS):
            raise ValueError(
                f"preset {preset.name}: 'words' vocabulary has only {len(SYNTHETIC_ATTRS)} "
                f"attributes and {len(SYNTHETIC_OBJS)} objects"
            )
        attrs, objs = SYNTHETIC_ATTRS[: preset.n_attrs], SYNTHETIC_OBJS[: preset.n_objs]
    elif preset.vocabulary == "generated":
        attrs = tuple(f"a{i:03d}" for i in range(preset.n_attrs))
        objs = tuple(f"o{i:03d}" for i in range(preset.n_objs))
    else:
        raise ValueError(f"preset {preset.name}: unknown vocabulary {preset.vocabulary!r}")
    return tuple(sorted(attrs)), tuple(sorted(objs))


def _spread(rng: np.random.Generator, n_items: int, n_bins: int) -> np.ndarray:
    """Split ``n_items`` over ``n_bins`` as evenly as possible; the remainder goes to random bins."""
    counts = np.full(n_bins, n_items // n_bins, dtype=np.int64)
    counts[rng.choice(n_bins, size=n_items % n_bins, replace=False)] += 1
    return counts


def plan_synthetic(
    preset: str | SyntheticPreset = "synthetic", seed: int = 0, layout: str | None = None
) -> SyntheticPlan:
    """Decide names, pair files and per-image labels of a synthetic dataset (no rendering).

    Train pairs first cover every attribute and object (``max(A, O)`` pairs), then random
    pairs fill up to ``train_pairs``. Val and test unseen pairs are drawn from the other
    pairs and are disjoint; their seen pairs are drawn from the train pairs.

    Args:
        preset: A preset name of ``PRESETS`` or a ``SyntheticPreset``.
        seed: Seed of every random choice.
        layout: Override the preset's image layout (``"pair-folders"`` or ``"flat"``).
    """
    spec = get_preset(preset)
    layout = layout or spec.layout
    if layout not in LAYOUTS:
        raise BenchError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    attrs, objs = _vocabulary(spec)
    n_attrs, n_objs = len(attrs), len(objs)
    n_cover = max(n_attrs, n_objs)
    if not (
        n_cover <= spec.train_pairs
        and spec.train_pairs + spec.val_unseen + spec.test_unseen <= n_attrs * n_objs
        and max(spec.val_seen, spec.test_seen) <= spec.train_pairs
        and spec.train_images >= spec.train_pairs
        and spec.val_images >= spec.val_seen + spec.val_unseen > 0
        and spec.test_images >= spec.test_seen + spec.test_unseen > 0
    ):
        raise ValueError(f"preset {spec.name}: inconsistent sizes {spec}")

    rng = np.random.default_rng([seed, 0x5EED])
    attr_perm = rng.permutation(n_attrs)
    obj_perm = rng.permutation(n_objs)
    steps = np.arange(n_cover)
    cover = attr_perm[steps % n_attrs] * n_objs + obj_perm[steps % n_objs]
    rest = rng.permutation(np.setdiff1d(np.arange(n_attrs * n_objs), cover))
    n_extra = spec.train_pairs - n_cover
    train_ids = rng.permutation(np.concatenate([cover, rest[:n_extra]]))
    val_unseen = rest[n_extra : n_extra + spec.val_unseen]
    test_unseen = rest[n_extra + spec.val_unseen : n_extra + spec.val_unseen + spec.test_unseen]
    outside = rest[n_extra + spec.val_unseen + spec.test_unseen :]
    val_ids = rng.permutation(
        np.concatenate([rng.choice(train_ids, spec.val_seen, replace=False), val_unseen])
    )
    test_ids = rng.permutation(
        np.concatenate([rng.choice(train_ids, spec.test_seen, replace=False), test_unseen])
    )

    def names(ids: np.ndarray) -> tuple[Pair, ...]:
        return tuple((attrs[int(i) // n_objs], objs[int(i) % n_objs]) for i in ids)

    split_ids = {"train": train_ids, "val": val_ids, "test": test_ids}
    n_images = {"train": spec.train_images, "val": spec.val_images, "test": spec.test_images}
    images: dict[str, tuple[Pair, ...]] = {}
    for split in DATA_SPLITS:
        pairs = names(split_ids[split])
        per_pair = _spread(rng, n_images[split], len(pairs))
        images[split] = tuple(
            pair for pair, k in zip(pairs, per_pair, strict=True) for _ in range(k)
        )

    skipped: list[tuple[str, str, str]] = []
    for i in range(spec.skipped_rows):
        skipped.append(("NA", objs[int(rng.integers(n_objs))], DATA_SPLITS[i % 3]))
        attr, obj = names(train_ids[[int(rng.integers(len(train_ids)))]])[0]
        skipped.append((attr, obj, "NA"))
        if len(outside):
            attr, obj = names(outside[[int(rng.integers(len(outside)))]])[0]
            skipped.append((attr, obj, DATA_SPLITS[i % 3]))

    return SyntheticPlan(
        preset=spec,
        higher_order=_plan_higher_order(spec, attrs, names(test_ids)),
        seed=seed,
        layout=layout,
        attrs=attrs,
        objs=objs,
        train_pairs=names(train_ids),
        val_pairs=names(val_ids),
        test_pairs=names(test_ids),
        images=MappingProxyType(images),
        skipped=tuple(skipped),
    )


def _plan_higher_order(
    spec: SyntheticPreset, attrs: tuple[str, ...], test_pairs: tuple[Pair, ...]
) -> tuple[tuple[str, str, str], ...]:
    """``aao_per_pattern`` images of every colour test pair with every pattern, sorted."""
    patterns = [attr for attr in attrs if attr in PATTERNS]
    if not spec.aao_per_pattern or spec.vocabulary != "words":
        return ()
    return tuple(
        (attr, pattern, obj)
        for attr, obj in sorted(set(test_pairs))
        if attr in COLOURS
        for pattern in patterns
        for _ in range(spec.aao_per_pattern)
    )


# ----------------------------------------------------------------------------- rendering

_SUPERSAMPLE = 3


def _polygon_star(points: int = 5, inner: float = 0.42) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        radius = 1.0 if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / points
        out.append((radius * math.cos(angle), radius * math.sin(angle)))
    return out


def _polygon_heart(n: int = 48) -> list[tuple[float, float]]:
    out = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        out.append((x / 16.5, -(y + 2.5) / 15.0))
    return out


_W = 0.3  # half width of the cross arms
# Each shape: a list of (kind, geometry, fill) drawn in order on the mask (unit radius).
_SHAPES: Mapping[str, list[tuple[str, object, int]]] = MappingProxyType(
    {
        "circle": [("ellipse", (0.0, 0.0, 0.95), 255)],
        "square": [("polygon", [(-0.78, -0.78), (0.78, -0.78), (0.78, 0.78), (-0.78, 0.78)], 255)],
        "triangle": [
            ("polygon", [(math.cos(a), math.sin(a) + 0.12) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)], 255)
        ],
        "star": [("polygon", _polygon_star(), 255)],
        "cross": [
            ("polygon", [(-_W, -1), (_W, -1), (_W, -_W), (1, -_W), (1, _W), (_W, _W), (_W, 1),
                         (-_W, 1), (-_W, _W), (-1, _W), (-1, -_W), (-_W, -_W)], 255)
        ],
        "ring": [("ellipse", (0.0, 0.0, 0.95), 255), ("ellipse", (0.0, 0.0, 0.55), 0)],
        "heart": [("polygon", _polygon_heart(), 255)],
        "diamond": [("polygon", [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], 255)],
        "moon": [("ellipse", (0.0, 0.0, 0.95), 255), ("ellipse", (0.45, -0.2, 0.8), 0)],
        "arrow": [
            ("polygon", [(-1, -0.25), (0.15, -0.25), (0.15, -0.7), (1, 0), (0.15, 0.7),
                         (0.15, 0.25), (-1, 0.25)], 255)
        ],
    }
)  # fmt: skip


def _shape_mask(
    obj: str, rng: np.random.Generator, canvas: int, rotation_offset: float = 0.0
) -> tuple[Image.Image, float]:
    """Draw shape ``obj`` at a random position, size and rotation; return (mask, radius)."""
    cx = canvas * (0.5 + rng.uniform(-0.12, 0.12))
    cy = canvas * (0.5 + rng.uniform(-0.12, 0.12))
    radius = canvas * rng.uniform(0.26, 0.36)
    theta = math.radians(rng.uniform(-20.0, 20.0) + rotation_offset)
    cos_t, sin_t = math.cos(theta), math.sin(theta)

    def place(x: float, y: float) -> tuple[float, float]:
        return cx + radius * (x * cos_t - y * sin_t), cy + radius * (x * sin_t + y * cos_t)

    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    for kind, geometry, fill in _SHAPES[obj]:
        if kind == "ellipse":
            x, y, r = geometry  # type: ignore[misc]
            px, py = place(x, y)
            draw.ellipse(
                (px - r * radius, py - r * radius, px + r * radius, py + r * radius), fill=fill
            )
        else:
            draw.polygon([place(x, y) for x, y in geometry], fill=fill)  # type: ignore[union-attr]
    return mask, radius


def _jitter(
    rgb: tuple[int, int, int], rng: np.random.Generator, amount: float = 15.0
) -> tuple[int, int, int]:
    shade = np.clip(np.asarray(rgb, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 255)
    return (int(round(shade[0])), int(round(shade[1])), int(round(shade[2])))


@functools.cache
def _grid(canvas: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _fill(
    attr: str, rng: np.random.Generator, canvas: int, pattern: str | None = None
) -> Image.Image:
    """The RGB fill of attribute ``attr`` on a ``canvas`` square: a colour or a pattern.

    With ``pattern``, a colour is overlaid with that pattern in a contrasting grey.
    """
    if attr in COLOURS:
        rgb = _jitter(COLOURS[attr], rng)
        if pattern is None:
            return Image.new("RGB", (canvas, canvas), rgb)
        luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
        grey = 45 if luminance > 140 else 210
        on = _pattern_mask(pattern, rng, canvas)
        fill = np.where(on[..., None], np.uint8(grey), np.asarray(rgb, dtype=np.uint8))
        return Image.fromarray(fill, "RGB")
    if pattern is not None:
        raise ValueError(f"a second attribute needs a colour attribute, got {attr!r}")
    dark = int(round(40.0 + rng.uniform(-10, 10)))
    light = int(round(215.0 + rng.uniform(-10, 10)))
    on = _pattern_mask(attr, rng, canvas)
    grey = np.where(on, np.uint8(dark), np.uint8(light))
    return Image.fromarray(grey, "L").convert("RGB")


def _pattern_mask(attr: str, rng: np.random.Generator, canvas: int) -> np.ndarray:
    """Boolean ``(canvas, canvas)`` mask of pattern ``attr`` (its "ink")."""
    yy, xx = _grid(canvas)
    if attr == "striped":
        angle = rng.uniform(0, math.pi)
        period = canvas * rng.uniform(0.12, 0.18)
        phase = rng.uniform(0, 1)
        on = ((xx * math.cos(angle) + yy * math.sin(angle)) / period + phase) % 1.0 < 0.5
    elif attr == "dotted":
        spacing = canvas * rng.uniform(0.13, 0.17)
        u = (xx - rng.uniform(0, spacing)) % spacing - spacing / 2
        v = (yy - rng.uniform(0, spacing)) % spacing - spacing / 2
        on = u * u + v * v < (0.3 * spacing) ** 2
    else:
        raise ValueError(f"unknown synthetic attribute {attr!r}; known: {SYNTHETIC_ATTRS}")
    return on


def _compose(
    fill: Image.Image, mask: Image.Image, rng: np.random.Generator, size: int
) -> Image.Image:
    """Paste ``fill`` through ``mask`` on a jittered grey background; downsample to ``size``."""
    grey = rng.uniform(85, 170)
    background = _jitter((int(grey),) * 3, rng, 12.0)
    big = Image.composite(fill, Image.new("RGB", mask.size, background), mask)
    small = np.asarray(big.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    noisy = small + rng.normal(0.0, 6.0, small.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


def render(
    attr: str, obj: str, rng: np.random.Generator, size: int = 48, attr2: str | None = None
) -> Image.Image:
    """Render one RGB image of ``attr obj`` (e.g. ``"striped"``, ``"star"``).

    Position, size, rotation, colour shade, pattern phase, background and pixel noise are
    drawn from ``rng``, so the same generator state gives the same image.

    Args:
        attr: One of ``SYNTHETIC_ATTRS``.
        obj: One of ``SYNTHETIC_OBJS``.
        rng: Source of the random jitter.
        size: Side of the square output image in pixels.
        attr2: A pattern of ``PATTERNS`` drawn over a colour ``attr`` ("red striped star").
    """
    if attr2 is not None and (attr not in COLOURS or attr2 not in PATTERNS):
        raise ValueError(f"second attribute {attr2!r} needs a colour and a pattern, got {attr!r}")
    if attr not in SYNTHETIC_ATTRS:
        raise ValueError(f"unknown synthetic attribute {attr!r}; known: {SYNTHETIC_ATTRS}")
    if obj not in SYNTHETIC_OBJS:
        raise ValueError(f"unknown synthetic object {obj!r}; known: {SYNTHETIC_OBJS}")
    canvas = size * _SUPERSAMPLE
    mask, _ = _shape_mask(obj, rng, canvas)
    return _compose(_fill(attr, rng, canvas, attr2), mask, rng, size)


def _render_generated(attr: str, obj: str, rng: np.random.Generator, size: int) -> Image.Image:
    """Render generated names (``a017``/``o123``): colour from the attribute index, shape
    and rotation from the object index."""
    a_idx, o_idx = int(attr[1:]), int(obj[1:])
    hue = (a_idx * 0.6180339887) % 1.0
    sat = 0.55 + 0.45 * ((a_idx // 7) % 2)
    val = 0.6 + 0.4 * ((a_idx // 3) % 2)
    rgb = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val))
    canvas = size * _SUPERSAMPLE
    shape = SYNTHETIC_OBJS[o_idx % len(SYNTHETIC_OBJS)]
    mask, _ = _shape_mask(shape, rng, canvas, rotation_offset=37.0 * (o_idx // len(SYNTHETIC_OBJS)))
    fill = Image.new("RGB", (canvas, canvas), _jitter(rgb, rng, 8.0))  # type: ignore[arg-type]
    return _compose(fill, mask, rng, size)


# ----------------------------------------------------------------------------- writing


def _image_name(layout: str, attr: str, obj: str, index: int) -> str:
    if layout == "flat":
        return f"{index:06d}.png"
    return f"{attr}_{obj}/{index:06d}.png"


def generator_params(plan: SyntheticPlan, image_size: int) -> dict[str, object]:
    """The parameters recorded in a generated dataset's ``generator.json``."""
    return {
        "generator": "bench.data.synthetic",
        "version": GENERATOR_VERSION,
        "preset": plan.preset.name,
        "seed": plan.seed,
        "layout": plan.layout,
        "image_size": image_size,
        "sizes": asdict(plan.preset),
    }


def read_generator_params(folder: Path) -> dict[str, object] | None:
    """The ``generator.json`` of a generated dataset folder, or None if it has none."""
    path = Path(folder) / GENERATOR_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_plan(
    plan: SyntheticPlan,
    out_dir: Path,
    image_size: int | None = None,
    on_image: Callable[[], None] | None = None,
) -> None:
    """Render ``plan`` into the (empty or missing) folder ``out_dir``, non-atomically.

    Use :func:`generate_synthetic` to write a dataset atomically.
    """
    import torch

    size = image_size or plan.preset.image_size
    words = plan.preset.vocabulary == "words"
    draw = render if words else _render_generated
    out_dir = Path(out_dir)
    (out_dir / SPLIT_DIR).mkdir(parents=True, exist_ok=True)
    images_dir = out_dir / IMAGES_DIR
    images_dir.mkdir(exist_ok=True)

    jobs: list[tuple[str, str, str]] = [
        (attr, obj, split) for split in DATA_SPLITS for attr, obj in plan.images[split]
    ]
    jobs += list(plan.skipped)
    rows: list[dict[str, str]] = []
    for index, (attr, obj, split) in enumerate(jobs):
        row = {
            "image": _image_name(plan.layout, attr, obj, index),
            "attr": attr,
            "obj": obj,
            "set": split,
        }
        if plan.preset.ut_style:
            row["_image"] = f"{obj}/{attr}/{index:06d}.png"
        rows.append(row)
    for folder in sorted({row["image"].rpartition("/")[0] for row in rows} - {""}):
        (images_dir / folder).mkdir(exist_ok=True)

    def write_image(index: int) -> None:
        attr, obj, _ = jobs[index]
        rng = np.random.default_rng([plan.seed, 0x1A6E, index])
        if attr == "NA":  # an image with no attribute label: render any attribute
            attr = plan.attrs[int(rng.integers(len(plan.attrs)))]
        draw(attr, obj, rng, size).save(images_dir / rows[index]["image"], format="PNG")

    higher_order = [
        TripleSample(f"{HIGHER_ORDER_DIR}/{index:06d}.png", attr, attr2, obj)
        for index, (attr, attr2, obj) in enumerate(plan.higher_order)
    ]
    if higher_order:
        (images_dir / HIGHER_ORDER_DIR).mkdir(exist_ok=True)

    def write_higher_order(index: int) -> None:
        sample = higher_order[index]
        rng = np.random.default_rng([plan.seed, HIGHER_ORDER_STREAM, index])
        image = render(sample.attr, sample.obj, rng, size, sample.attr2)
        image.save(images_dir / sample.image, format="PNG")

    # Every image has its own seed, so threads (file creation dominates) keep it deterministic.
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        for _ in itertools.chain(
            pool.map(write_image, range(len(jobs)), chunksize=64),
            pool.map(write_higher_order, range(len(higher_order)), chunksize=64),
        ):
            if on_image is not None:
                on_image()

    for split in DATA_SPLITS:
        text = "".join(f"{a} {o}\n" for a, o in plan.split_pairs(split))
        pair_file(out_dir, split).write_text(text, encoding="utf-8")
    torch.save(rows, metadata_file(out_dir))
    if higher_order:
        write_annotations(out_dir, higher_order)
    (out_dir / GENERATOR_FILE).write_text(
        json.dumps(generator_params(plan, size), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def generate_synthetic(
    out_dir: Path,
    preset: str | SyntheticPreset = "synthetic",
    seed: int = 0,
    layout: str | None = None,
    image_size: int | None = None,
    *,
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Generate a synthetic dataset into ``out_dir``, atomically.

    The dataset is written into a temporary sibling folder and renamed into place, so a
    killed generation never leaves a half-written dataset. If another process finishes
    the same folder first, its result is kept.

    Args:
        out_dir: The dataset folder to create.
        preset: A name of ``PRESETS`` or a ``SyntheticPreset``.
        seed: Seed of the split plan and of every image.
        layout: ``"pair-folders"`` or ``"flat"``; defaults to the preset's.
        image_size: Image side in pixels; defaults to the preset's.
        force: Replace ``out_dir`` if it exists (otherwise that is a BenchError).
        progress: Show a rich progress bar on stderr.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    plan = plan_synthetic(preset, seed=seed, layout=layout)
    if out_dir.exists() and not force:
        raise BenchError(f"{out_dir} already exists; remove it or regenerate with force (--force)")
    total = sum(len(v) for v in plan.images.values()) + len(plan.skipped) + len(plan.higher_order)
    try:
        with atomic_directory(
            out_dir,
            is_complete=lambda folder: (folder / SPLIT_DIR).is_dir(),
            force=force,
            replace_incomplete=False,
        ) as tmp:
            if progress:
                from rich.console import Console
                from rich.progress import Progress

                with Progress(console=Console(stderr=True), transient=True) as bar:
                    task = bar.add_task(f"generating {plan.preset.name}", total=total)
                    write_plan(plan, tmp, image_size, on_image=lambda: bar.advance(task))
            else:
                write_plan(plan, tmp, image_size)
    except FileExistsError:
        raise BenchError(
            f"{out_dir} appeared while the dataset was generated and is not a dataset; "
            "remove it or regenerate with force (--force)"
        ) from None
    return out_dir
