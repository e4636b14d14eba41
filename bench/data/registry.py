"""Dataset names -> folders under a data root, from the ``datasets/*.toml`` cards.

A card of ``kind = "download"`` is a real dataset (fetched by ``bench data download``); a
card of ``kind = "synthetic"`` is generated on demand by ``bench.data.synthetic``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.cards import card_names, load_card
from bench.data.czsl import SPLIT_DIR, CZSLDataset, check_layout, load_dataset, metadata_file
from bench.errors import BenchError

REAL_DATASETS: tuple[str, ...] = ("mit-states", "ut-zappos", "cgqa")
DATA_ROOT_ENV = "BENCH_DATA_ROOT"


def default_data_root() -> Path:
    """The data root: ``$BENCH_DATA_ROOT`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_ROOT_ENV) or "data").expanduser()


def registered_datasets() -> list[str]:
    """Names of all dataset cards, sorted."""
    return card_names("datasets")


def is_registered(name: str) -> bool:
    """Whether ``name`` is the name of a dataset card."""
    return name in registered_datasets()


def dataset_card(name: str) -> dict[str, Any]:
    """The card of dataset ``name`` (a BenchError listing the known names if unknown)."""
    return load_card("datasets", name)


def dataset_folder(name: str, root: Path | None = None) -> Path:
    """Where registered dataset ``name`` lives under ``root`` (it may not exist)."""
    card = dataset_card(name)
    return Path(root if root is not None else default_data_root()) / card.get("folder", name)


def is_present(folder: Path) -> bool:
    """Whether ``folder`` holds a (complete-looking) dataset: split folder and metadata."""
    return (Path(folder) / SPLIT_DIR).is_dir() and metadata_file(Path(folder)).is_file()


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.startswith((".", "~"))


def _unknown(name: str) -> BenchError:
    return BenchError(
        f"unknown dataset {name!r}; known: {', '.join(registered_datasets())} "
        "(or give the path of a dataset folder in the standard CZSL format)"
    )


def expand_dataset_names(spec: str) -> list[str]:
    """Split a comma list of dataset names or paths; ``all`` means the three real datasets.

    Duplicates are dropped (first occurrence kept); paths are kept as given.

    Raises:
        BenchError: the list is empty, or an item is neither a registered name nor an
            existing folder.
    """
    out: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        names = list(REAL_DATASETS) if item == "all" else [item]
        for name in names:
            if not is_registered(name) and not Path(name).expanduser().is_dir():
                if _looks_like_path(name):
                    raise BenchError(f"dataset folder {name} does not exist; check the path")
                raise _unknown(name)
            if name not in out:
                out.append(name)
    if not out:
        raise BenchError(
            f"no dataset given in {spec!r}; name one or more of "
            f"{', '.join(registered_datasets())} or 'all' (comma-separated)"
        )
    return out


def synthetic_params(name: str, seed: int | None = None) -> dict[str, Any]:
    """Generator parameters of synthetic card ``name``: preset, seed, layout, image_size."""
    from bench.data.synthetic import get_preset

    card = dataset_card(name)
    if card.get("kind") != "synthetic":
        raise BenchError(
            f"{name!r} is not a synthetic dataset (kind {card.get('kind')!r}); fetch it with "
            f"`bench data download {name} --root DIR`"
        )
    gen = dict(card.get("generator", {}))
    preset = get_preset(gen.get("preset", name))
    return {
        "preset": preset.name,
        "seed": int(seed if seed is not None else gen.get("seed", 0)),
        "layout": gen.get("layout", card.get("layout", preset.layout)),
        "image_size": int(gen.get("image_size", preset.image_size)),
    }


def prepare_synthetic(
    name: str,
    root: Path | None = None,
    *,
    seed: int | None = None,
    force: bool = False,
    progress: bool = False,
) -> tuple[Path, bool]:
    """Generate synthetic dataset ``name`` under ``root`` unless it is already there.

    Args:
        name: A registered synthetic dataset.
        root: The data root (default ``default_data_root()``).
        seed: Override the card's seed.
        force: Regenerate even if present (also when present with other parameters).
        progress: Show a progress bar on stderr.

    Returns:
        ``(folder, generated)``: ``generated`` is False if it was already present.

    Raises:
        BenchError: ``name`` is not synthetic, or the folder holds a dataset generated
            with other parameters (and ``force`` is False).
    """
    from bench.data.synthetic import generate_synthetic, read_generator_params

    params = synthetic_params(name, seed)
    folder = dataset_folder(name, root)
    if not force and folder.exists():
        found = read_generator_params(folder)
        if found is not None and all(found.get(k) == v for k, v in params.items()):
            return folder, False
        if found is not None:
            raise BenchError(
                f"{folder} holds {found.get('preset')} generated with seed {found.get('seed')}, "
                f"layout {found.get('layout')}, image_size {found.get('image_size')}, not "
                f"seed {params['seed']}, layout {params['layout']}, image_size "
                f"{params['image_size']}; pass --force to regenerate it or use another --root"
            )
        raise BenchError(
            f"{folder} exists but is not a generated {name} dataset; remove it or pass --force"
        )
    generate_synthetic(folder, **params, force=force, progress=progress)
    return folder, True


def resolve_dataset(
    name_or_path: str | os.PathLike[str], root: Path | None = None, *, prepare: bool = False
) -> Path:
    """Find the folder of a dataset given by registered name or by path.

    Args:
        name_or_path: A registered name (-> ``<root>/<card folder>``) or the path of a
            folder in the standard format (registered names take precedence).
        root: The data root (default ``default_data_root()``).
        prepare: Generate a missing synthetic dataset instead of failing.

    Raises:
        BenchError: unknown name, missing real dataset (says to run ``bench data
            download``), missing synthetic dataset with ``prepare=False``, or a path that
            is not a dataset folder.
    """
    value = os.fspath(name_or_path)
    root = Path(root) if root is not None else default_data_root()
    if is_registered(value):
        card = dataset_card(value)
        folder = dataset_folder(value, root)
        if card.get("kind") == "synthetic":
            outdated = prepare and is_present(folder) and _made_by_older_generator(folder)
            if is_present(folder) and not outdated:
                return folder
            if prepare:
                return prepare_synthetic(value, root, force=outdated, progress=True)[0]
            raise BenchError(
                f"synthetic dataset {value!r} is not in {root} (expected {folder}); run "
                f"`bench data prepare {value} --root {root}`"
            )
        if not is_present(folder):
            raise BenchError(
                f"dataset {value!r} is not in {root} (expected {folder} with {SPLIT_DIR}/ "
                f"and {metadata_file(folder).name}); run `bench data download {value} --root {root}`"
            )
        return folder
    path = Path(value).expanduser()
    if path.is_dir():
        return check_layout(path)
    if _looks_like_path(value):
        raise BenchError(f"dataset folder {value} does not exist; check the path")
    raise _unknown(value)


def _made_by_older_generator(folder: Path) -> bool:
    """Whether ``folder`` was rendered by an older synthetic generator (e.g. before the
    higher-order images existed), so that preparing it again brings it up to date."""
    from bench.data.synthetic import GENERATOR_VERSION, read_generator_params

    found = read_generator_params(folder)
    version = found.get("version", 1) if found is not None else GENERATOR_VERSION
    return isinstance(version, int) and version < GENERATOR_VERSION


def open_dataset(
    name_or_path: str | os.PathLike[str], root: Path | None = None, *, prepare: bool = False
) -> CZSLDataset:
    """Resolve and load a dataset; a registered name becomes the dataset's ``name``."""
    path = resolve_dataset(name_or_path, root, prepare=prepare)
    value = os.fspath(name_or_path)
    return load_dataset(path, name=value if is_registered(value) else None)
