"""The method interface and the hyperparameters of a method's card.

A method fits on the training split (using the validation split only for model selection)
and returns scores for image features x candidate pairs. It never computes metrics: the
runner passes ``FitContext.validate``, which scores the validation split with the method and
asks the evaluator for the closed-world AUC. Methods are found by
``bench.methods.registry``; the one training loop is ``bench.methods.training``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from bench.errors import BenchError

if TYPE_CHECKING:
    import torch

    from bench.backbones import Backbone
    from bench.data.czsl import CZSLDataset
    from bench.features import FeatureSet, TrainViews


#: Most scores per yielded block (128 MB of float32): C-GQA open world has 278,362 columns.
MAX_BLOCK_ELEMENTS = 1 << 25


@dataclass
class FitContext:
    """Everything a method may use while fitting.

    Attributes:
        dataset: The dataset (names, pairs, splits).
        backbone: The frozen backbone (None for methods that need none).
        features: Cached image features per split ("train", "val", "test").
        hparams: Resolved hyperparameters (card defaults for the dataset + overrides).
        seed: Random seed; the method must seed every generator it uses from it.
        device: Torch device string for training.
        augment: "none" (train on cached features) or "paper" (re-encode augmented images).
        text_encoding: How methods that encode prompts run the text encoder: "prefix"
            (each shared prompt prefix once, ``bench.prefix_text``) or "full".
        validate: Scores the val split with the method in its current state and returns the
            closed-world val AUC (computed by the evaluator, not the method).
        on_epoch_end: Progress/logging callback ``(epoch, metrics)``; metrics hold at least
            ``train/loss`` and ``val/cw/auc``.
        checkpoint_dir: Folder for per-epoch checkpoints of the trainable state.
        word_vectors: Optional callable mapping names to vectors (word-embedding methods).
        epoch_selection: "val-auc" (keep the epoch with the best closed-world val AUC) or
            "last" (the official CSP code's: evaluate the last epoch).
        name_cleaning: How names become prompt text ("words" or "official", see
            ``bench.backbones.clean_name``).
        train_views: With ``augment="paper"``: the pipeline's cache of augmented training
            views (``bench.features.TrainViews``), shared by the methods of a grid; None
            re-encodes augmented images live.
        tokens: Cached image tokens per split (``bench.features.TokenSet``), for methods
            whose ``needs`` include "tokens"; empty otherwise.
        images: The images per split (``bench.features.ImageSet``), for methods whose
            ``needs`` include "images" (they encode them with their own trainable modules).
    """

    dataset: CZSLDataset
    backbone: Backbone | None
    features: Mapping[str, FeatureSet]
    hparams: Mapping[str, Any]
    seed: int
    device: str = "cpu"
    augment: str = "none"
    text_encoding: str = "prefix"
    validate: Callable[[Method], float] = lambda method: float("nan")
    on_epoch_end: Callable[[int, Mapping[str, float]], None] = lambda epoch, metrics: None
    checkpoint_dir: Path | None = None
    word_vectors: Any = None
    epoch_selection: str = "val-auc"
    name_cleaning: str = "words"
    train_views: TrainViews | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    tokens: Mapping[str, Any] = field(default_factory=dict)
    images: Mapping[str, Any] = field(default_factory=dict)


class Method(abc.ABC):
    """Base class of every CZSL method.

    A concrete subclass that sets ``name`` in its own body, in a module of ``bench.methods``,
    is a built-in method; its card is ``methods/<name>.toml``. Installed packages add methods
    through entry points (see ``bench.methods.registry``).
    """

    name: ClassVar[str]
    #: Whether ``fit`` trains anything (zero-shot methods do not).
    trains: ClassVar[bool] = True
    #: Whether the method needs the backbone's text side (CLIP-family methods).
    needs_text_encoder: ClassVar[bool] = False
    #: Whether the method runs prompts through the text encoder (so ``--text-encoding``
    #: applies to it and is part of its cells' configuration).
    encodes_prompts: ClassVar[bool] = False
    #: The feature levels it needs (``bench.features.FEATURE_LEVELS``); the first one is
    #: what ``score`` receives: pooled (N, D) features, a ``TokenSet`` or an ``ImageSet``.
    #: A method whose needs depend on its hyperparameters overrides ``needs_for``.
    needs: ClassVar[tuple[str, ...]] = ("pooled",)

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)

    @classmethod
    def needs_for(cls, hparams: Mapping[str, Any]) -> tuple[str, ...]:
        """The feature levels the method needs with ``hparams`` (default: ``needs``)."""
        return cls.needs

    def input_level(self) -> str:
        """What ``score`` receives with this instance's hyperparameters."""
        return type(self).needs_for(self.hparams)[0]

    @abc.abstractmethod
    def fit(self, ctx: FitContext) -> dict[str, Any]:
        """Train on ``ctx``; return a small log (best epoch, epochs run, final loss...)."""

    @abc.abstractmethod
    def score(
        self, image_features: torch.Tensor, pairs: np.ndarray, block_size: int = 1024
    ) -> Iterator[np.ndarray]:
        """Yield float32 score blocks of shape (n_i, P), in image order.

        Args:
            image_features: (N, D) features of the images to score (a ``TokenSet`` or an
                ``ImageSet`` for a method whose ``needs`` start with "tokens" or "images").
            pairs: (P, 2) int array of (attr_id, obj_id) candidates.
            block_size: Rows per yielded block.
        """

    @classmethod
    def config_extras(
        cls,
        hparams: Mapping[str, Any],
        *,
        dataset: Any,
        backbone: Any,
        word_vectors_spec: str | None,
    ) -> dict[str, Any]:
        """Entries merged into a cell's configuration (and so into its hash); default none.

        Args:
            hparams: The cell's resolved hyperparameters.
            dataset: The cell's dataset.
            backbone: The run's backbone.
            word_vectors_spec: The run's ``--word-vectors`` (None if not given).
        """
        return {}

    def trainable_state(self) -> dict[str, Any]:
        """Tensors that training changed (saved as artifacts and checkpoints)."""
        return {}

    def load_trainable_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what ``trainable_state`` returned (methods that train override it)."""


def resolve_hparams(
    method_name: str, dataset_name: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Hyperparameters of ``method_name`` on ``dataset_name`` from its card, plus overrides.

    The card's ``[hparams.default]`` table is updated with the dataset's table: the exact
    dataset name, else the longest ``-``-separated prefix that has a table (so
    ``synthetic-cgqa`` uses ``[hparams.synthetic]``). ``overrides`` win; ``None`` values
    are ignored and strings are converted to the type of the value they replace.

    Raises:
        BenchError: On an override key the card does not define, or a value that cannot be
            converted.
    """
    from bench.cards import load_card

    tables = load_card("methods", method_name).get("hparams", {})
    resolved: dict[str, Any] = dict(tables.get("default", {}))
    parts = dataset_name.split("-")
    for end in range(len(parts), 0, -1):
        candidate = "-".join(parts[:end])
        if candidate != "default" and isinstance(tables.get(candidate), dict):
            resolved.update(tables[candidate])
            break
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in resolved:
            known = ", ".join(sorted(resolved)) or "none"
            raise BenchError(
                f"unknown hyperparameter {key!r} for method {method_name}; known: {known}"
            )
        resolved[key] = _coerce_hparam(method_name, key, value, resolved[key])
    return resolved


def method_hparams(method_name: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The card's default table for ``method_name`` updated with ``hparams``.

    Lets a method be built with partial hyperparameters (tests, library use) while the
    card stays the single source of default values.
    """
    merged = resolve_hparams(method_name, "default")
    merged.update({k: v for k, v in hparams.items() if v is not None})
    return merged


def _coerce_hparam(method_name: str, key: str, value: Any, default: Any) -> Any:
    """Convert ``value`` to the type of ``default`` (strings from the CLI, ints for floats)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        return str(value)
    else:
        return value
    raise BenchError(
        f"hyperparameter {key!r} of method {method_name} must be a {type(default).__name__} "
        f"(like {default!r}), got {value!r}"
    )
