"""VisProd, and the shared base of the methods trained on cached image features.

``FeatureMethod`` is the training/scoring machinery of the pre-CLIP word-embedding family
(visprod, compcos, cge): they never touch the backbone, only ``ctx.features[split]``, the
cached image features of the run's backbone, so they compare fairly with the CLIP methods.

VisProd (the czsl library's ``VisualProductNN``; Misra, Gupta & Hebert, CVPR 2017): two
MLP classifiers on the image feature, one over attributes and one over objects, trained
with the sum of their cross-entropies; a pair's score is the *product* of the two softmax
probabilities ``p(a | x) * p(o | x)`` (as czsl does). It is the non-compositional lower
bound: unseen pairs are scored exactly like seen ones.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.checkpoints import EpochCheckpointer
from bench.errors import BenchError
from bench.methods.base import MAX_BLOCK_ELEMENTS, FitContext, Method, register_method
from bench.methods.common import (
    BestEpochTracker,
    as_pair_tensor,
    clone_state,
    method_hparams,
    pairs_digest,
    seed_everything,
    train_pair_labels,
)

#: Candidate-pair representations cached per method instance (closed + open world).
_CACHE_ENTRIES = 2
_MODEL_PREFIX = "model."
#: Word-vector providers tried when neither the run nor the card names one.
DEFAULT_CHAIN = ("glove50", "backbone")


def mlp(
    in_dim: int,
    out_dim: int,
    layers: int,
    hidden_dim: int,
    dropout: float = 0.0,
    norm: bool = True,
) -> nn.Module:
    """The czsl ``MLP``: ``layers`` Linear layers, hidden ones followed by LayerNorm, ReLU
    and dropout (no activation after the last). ``layers=0`` is the identity.
    """
    if layers <= 0:
        return nn.Identity()
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        modules.append(nn.Linear(width, hidden_dim))
        if norm:
            modules.append(nn.LayerNorm(hidden_dim))
        modules.append(nn.ReLU())
        if dropout > 0:
            modules.append(nn.Dropout(dropout))
        width = hidden_dim
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


def unit_rows(vectors: Any) -> np.ndarray:
    """Float32 copy of a (n, D) array with rows scaled to unit L2 norm."""
    array = np.array(vectors, dtype=np.float32, copy=True)
    if array.ndim != 2 or array.shape[0] == 0:
        raise BenchError(f"word vectors must be a non-empty (n, D) array, got {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def prepare_features(features: torch.Tensor) -> torch.Tensor:
    """Image features as the models see them: L2-normalised, times sqrt(D) (unit RMS)."""
    features = features.float()
    return F.normalize(features, dim=-1) * math.sqrt(features.shape[-1])


@dataclass(frozen=True)
class WordVectorChoice:
    """Which word vectors a method uses on a dataset, and why.

    Attributes:
        spec: The provider spec (``glove50``, ``backbone-text``, ``glove:PATH``...).
        source: ``hparam word_vectors``, ``run --word-vectors`` or ``card default_word_vectors``.
        skipped: Card defaults tried first that did not load, each with its reason.
    """

    spec: str
    source: str
    skipped: tuple[str, ...] = ()


def choose_word_vectors(
    method_name: str,
    hparams: Mapping[str, Any],
    run_spec: str | None,
    dataset: Any,
    backbone: Any = None,
) -> WordVectorChoice:
    """The word vectors of a word-embedding method, first that applies: the
    ``word_vectors`` hyperparameter (unless ``"auto"``; a comma-separated list means the
    first of them that loads for ``dataset``); the run's ``--word-vectors``; the card's
    ``default_word_vectors`` list, first provider that loads for ``dataset``.

    The runner records the result in each cell's configuration, so a result made with
    other vectors (e.g. without the glove50 package) never counts as the same cell.

    Raises:
        BenchError: No card default loads (every reason in one line).
    """
    from bench.cards import load_card
    from bench.wordvectors import load_first_available

    choice = str(hparams.get("word_vectors", "auto") or "auto").strip()
    if choice != "auto":
        specs = [spec.strip() for spec in choice.split(",") if spec.strip()]
        if len(specs) == 1:
            return WordVectorChoice(specs[0], "hparam word_vectors")
        vectors, skipped = load_first_available(specs, dataset, backbone=backbone)
        return WordVectorChoice(vectors.spec, "hparam word_vectors", tuple(skipped))
    if run_spec:
        return WordVectorChoice(str(run_spec), "run --word-vectors")
    chain = load_card("methods", method_name).get("default_word_vectors", DEFAULT_CHAIN)
    chain = [chain] if isinstance(chain, str) else list(chain)
    vectors, skipped = load_first_available(chain, dataset, backbone=backbone)
    return WordVectorChoice(vectors.spec, "card default_word_vectors", tuple(skipped))


class FeatureMethod(Method):
    """Base of methods that train a small model on cached image features.

    Subclasses build the model (``_build``), give the training targets (``_targets``) and
    loss (``_loss``), and score candidate pairs in two steps: a per-pair representation
    computed once per candidate set (``_pair_side``, cached) and the scores of a block of
    image features against it (``_block_scores``).

    Training (``fit``): Adam with L2 ``weight_decay``, shuffled batches of the train split's
    cached features, after each epoch ``ctx.validate`` (closed-world val AUC) and
    ``ctx.on_epoch_end``; the epoch with the strictly best val AUC is restored at the end.
    Everything random is seeded from ``ctx.seed``. Each epoch is checkpointed through
    ``bench.checkpoints.EpochCheckpointer``, so a killed fit resumes where it stopped.
    """

    trains = True
    needs_text_encoder = False

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__(method_hparams(self.name, hparams))
        self.dataset: Any = None
        self.model: nn.Module | None = None
        self.device = torch.device("cpu")
        self.fit_info: dict[str, Any] = {}
        self._version = 0
        self._pair_cache: dict[tuple[str, int], Any] = {}
        self._pending_state: Mapping[str, Any] | None = None

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def _build(self, ctx: FitContext, feature_dim: int) -> nn.Module:
        """The model for ``ctx.dataset`` (word vectors etc. resolved here)."""

    @abc.abstractmethod
    def _targets(self, ctx: FitContext, attr_idx: np.ndarray, obj_idx: np.ndarray) -> torch.Tensor:
        """(N, k) int64 training targets of the train images."""

    @staticmethod
    def _pair_targets(ctx: FitContext, attr_idx: np.ndarray, obj_idx: np.ndarray) -> torch.Tensor:
        """(N, 1) index of each train image's pair among the training pairs."""
        seen = np.asarray(ctx.dataset.seen_pairs_ids(), dtype=np.int64)
        name = getattr(ctx.dataset, "name", "?")
        return train_pair_labels(attr_idx, obj_idx, seen, name)[:, None]

    @abc.abstractmethod
    def _loss(self, features: torch.Tensor, targets: torch.Tensor, epoch: int) -> torch.Tensor:
        """Mean loss of a batch of prepared features (model in train mode)."""

    @abc.abstractmethod
    def _pair_side(self, pairs: torch.Tensor) -> Any:
        """What scoring needs per candidate pair (eval mode, no gradients)."""

    @abc.abstractmethod
    def _block_scores(self, features: torch.Tensor, pair_side: Any) -> torch.Tensor:
        """(n, P) scores of prepared image features against ``_pair_side``'s output."""

    def _start_epoch(self, epoch: int) -> None:
        """Called before each training epoch (e.g. to ramp a margin)."""

    def _generators(self) -> dict[str, torch.Generator]:
        """Named generators the loss draws from (e.g. negative sampling), built in
        ``_build``; checkpoints save and restore them so a resumed fit is identical.
        """
        return {}

    def _word_vectors(self, ctx: FitContext) -> tuple[np.ndarray, np.ndarray]:
        """(attr (A, D), obj (O, D)) unit-norm float32 word vectors for ``ctx.dataset``.

        Chosen by :func:`choose_word_vectors`; which ones (and why others were skipped)
        goes to the fit log.
        """
        from bench.wordvectors import load_word_vectors

        run_spec = None
        if ctx.word_vectors is not None:
            run_spec = str(getattr(ctx.word_vectors, "spec", "the run's word vectors"))
        choice = choose_word_vectors(self.name, self.hparams, run_spec, ctx.dataset, ctx.backbone)
        if choice.source == "run --word-vectors" and ctx.word_vectors is not None:
            vectors = ctx.word_vectors
        else:
            vectors = load_word_vectors(choice.spec, ctx.dataset, backbone=ctx.backbone)
        attr, obj = vectors.vectors_for(ctx.dataset)
        self.fit_info["word_vectors"] = getattr(vectors, "description", str(vectors))
        self.fit_info["word_vectors_source"] = choice.source
        if choice.skipped:
            self.fit_info["word_vectors_skipped"] = list(choice.skipped)
        return unit_rows(attr), unit_rows(obj)

    # ------------------------------------------------------------------ setup / state
    def prepare(self, ctx: FitContext) -> None:
        """Bind the dataset and build the (untrained) model; apply a state loaded earlier.

        Non-None values of ``ctx.hparams`` take precedence over the constructor's.
        """
        self.hparams.update({k: v for k, v in ctx.hparams.items() if v is not None})
        if "train" not in ctx.features:
            raise BenchError(f"method {self.name} trains on the train split's cached features")
        self.dataset = ctx.dataset
        self.device = torch.device(ctx.device)
        feature_dim = int(ctx.features["train"].features.shape[1])
        self.fit_info = {}
        self.model = self._build(ctx, feature_dim).to(self.device)
        self._invalidate()
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.load_trainable_state(state)

    def _invalidate(self) -> None:
        self._version += 1
        self._pair_cache.clear()

    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError(f"{self.name}: call fit() or prepare() before scoring")
        return self.model

    def trainable_state(self) -> dict[str, Any]:
        """Model tensors (``model.<name>``) plus the vocabulary they belong to."""
        if self.model is None:
            return {}
        state: dict[str, Any] = {
            _MODEL_PREFIX + k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
        }
        state["attrs"] = list(self.dataset.attrs)
        state["objs"] = list(self.dataset.objs)
        return state

    def load_trainable_state(self, state: Mapping[str, Any]) -> None:
        """Restore ``trainable_state()``'s output; before ``prepare`` it is kept for later."""
        if self.model is None:
            self._pending_state = clone_state(state)
            return
        for kind in ("attrs", "objs"):
            mine = list(getattr(self.dataset, kind))
            theirs = list(state.get(kind, mine))
            if theirs != mine:
                raise BenchError(
                    f"saved {self.name} state was trained on other {kind} than dataset "
                    f"{getattr(self.dataset, 'name', '?')} ({len(theirs)} vs {len(mine)})"
                )
        tensors = {
            k[len(_MODEL_PREFIX) :]: torch.as_tensor(v)
            for k, v in state.items()
            if k.startswith(_MODEL_PREFIX)
        }
        try:
            self.model.load_state_dict(tensors)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise BenchError(f"saved {self.name} state does not fit this model: {first}") from exc
        self._invalidate()

    # ------------------------------------------------------------------ training
    def fit(self, ctx: FitContext) -> dict[str, Any]:
        """Train on the cached train features; keep the epoch with the best val AUC.

        Returns:
            ``best_epoch`` (1-based, 0 if nothing trained), ``epochs_run``,
            ``best_val_auc``, ``final_loss`` and method-specific entries (e.g. the word
            vectors used).
        """
        if ctx.augment != "none":
            raise BenchError(
                f"method {self.name} trains on cached features only; use --augment none"
            )
        generator = seed_everything(ctx.seed)
        self.prepare(ctx)
        model = self._require_model()
        hp = self.hparams
        epochs = int(hp["epochs"])
        if epochs < 0:
            raise BenchError(f"epochs must be >= 0, got {epochs}")
        log: dict[str, Any] = {
            "best_epoch": 0,
            "epochs_run": 0,
            "best_val_auc": None,
            "final_loss": None,
            "augment": "none",
            **self.fit_info,
        }
        if epochs == 0:
            return log
        train = ctx.features["train"]
        features = prepare_features(torch.as_tensor(train.features)).to(self.device)
        if features.shape[0] == 0:
            raise BenchError(f"dataset {getattr(ctx.dataset, 'name', '?')} has no training images")
        targets = self._targets(ctx, np.asarray(train.attr_idx), np.asarray(train.obj_idx))
        targets = targets.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(
            params, lr=float(hp["lr"]), weight_decay=float(hp.get("weight_decay", 0.0))
        )
        batch_size = int(hp["batch_size"])
        tracker = BestEpochTracker()
        # Resume after the last finished epoch of an interrupted fit (same key = same cell);
        # dropout draws from the global torch RNG, which the checkpoint also restores.
        generators = {"shuffle": generator, **self._generators()}
        checkpointer = EpochCheckpointer(ctx, self, optimizer, generators, tracker)
        first_epoch, epoch_loss = checkpointer.resume_point(log)
        for epoch in range(first_epoch, epochs + 1):
            self._start_epoch(epoch)
            model.train()
            losses = []
            order = torch.randperm(features.shape[0], generator=generator).to(self.device)
            for index in order.split(batch_size):
                loss = self._loss(features[index], targets[index], epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            self._invalidate()
            model.eval()
            epoch_loss = checkpointer.end_epoch(epoch, losses)
        if tracker.best_state is not None:
            self.load_trainable_state(tracker.best_state)
        model.eval()
        log.update(checkpointer.fit_summary(epochs, epoch_loss), **self.fit_info)
        return log

    # ------------------------------------------------------------------ scoring
    def score(
        self, image_features: torch.Tensor, pairs: np.ndarray, block_size: int = 1024
    ) -> Iterator[np.ndarray]:
        """Yield float32 (n_i, P) score blocks in image order.

        Blocks have at most ``block_size`` rows, fewer when P is large (at most
        ``MAX_BLOCK_ELEMENTS`` scores per block), so C-GQA's open world never needs a
        dense N x P matrix.
        """
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        model = self._require_model()
        model.eval()
        key = (pairs_digest(pairs), self._version)
        side = self._pair_cache.get(key)
        if side is None:
            with torch.no_grad():
                side = self._pair_side(as_pair_tensor(pairs, self.device))
            while len(self._pair_cache) >= _CACHE_ENTRIES:
                self._pair_cache.pop(next(iter(self._pair_cache)))
            self._pair_cache[key] = side
        n_pairs = len(pairs)
        rows = max(1, min(block_size, MAX_BLOCK_ELEMENTS // max(n_pairs, 1)))
        image_features = torch.as_tensor(image_features)
        for start in range(0, image_features.shape[0], rows):
            with torch.no_grad():
                block = prepare_features(image_features[start : start + rows].to(self.device))
                scores = self._block_scores(block, side).float().cpu().numpy()
            yield scores


# --------------------------------------------------------------------------- VisProd


class _VisProdModel(nn.Module):
    def __init__(self, feature_dim: int, n_attrs: int, n_objs: int, hp: Mapping[str, Any]):
        super().__init__()
        layers, hidden = int(hp["image_layers"]), int(hp["hidden_dim"])
        dropout = float(hp["dropout"])
        self.attr_clf = mlp(feature_dim, n_attrs, layers, hidden, dropout)
        self.obj_clf = mlp(feature_dim, n_objs, layers, hidden, dropout)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attr_clf(features), self.obj_clf(features)


@register_method("visprod")
class VisProd(FeatureMethod):
    """Independent attribute and object classifiers; pair score = p(a|x) * p(o|x).

    Hyperparameters (methods/visprod.toml): ``epochs``, ``lr``, ``weight_decay``,
    ``batch_size``, ``image_layers``, ``hidden_dim``, ``dropout``.
    """

    def _build(self, ctx: FitContext, feature_dim: int) -> nn.Module:
        dataset = ctx.dataset
        return _VisProdModel(feature_dim, len(dataset.attrs), len(dataset.objs), self.hparams)

    def _targets(self, ctx: FitContext, attr_idx: np.ndarray, obj_idx: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.stack([attr_idx, obj_idx], axis=1), dtype=torch.long)

    def _loss(self, features: torch.Tensor, targets: torch.Tensor, epoch: int) -> torch.Tensor:
        assert self.model is not None
        attr_logits, obj_logits = self.model(features)
        return F.cross_entropy(attr_logits, targets[:, 0]) + F.cross_entropy(
            obj_logits, targets[:, 1]
        )

    def _pair_side(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pairs[:, 0], pairs[:, 1]

    def _block_scores(
        self, features: torch.Tensor, pair_side: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        assert self.model is not None
        attr_logits, obj_logits = self.model(features)
        attr_ids, obj_ids = pair_side
        p_attr = attr_logits.softmax(dim=-1)
        p_obj = obj_logits.softmax(dim=-1)
        return p_attr[:, attr_ids].mul_(p_obj[:, obj_ids])
