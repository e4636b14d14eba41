"""The word-embedding family: methods trained on cached image features.

``FeatureMethod`` is the base of the pre-CLIP baselines (visprod, compcos, cge, le+, aop):
they never touch the backbone's image side, only ``ctx.features[split]``, the cached image
features of the run's backbone, so they compare fairly with the CLIP methods. Which word
vectors they use is chosen by ``choose_word_vectors`` (and recorded in each cell's config
through ``FeatureMethod.config_extras``). ``EmbeddingDistanceMethod`` scores pairs by the
distance between image and pair embeddings (le+, aop).
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

from bench.errors import BenchError
from bench.methods.base import FitContext, method_hparams
from bench.methods.scoring import CandidateCache, as_pair_tensor, block_rows
from bench.methods.training import TrainableMethod, shuffled_batches, train_pair_labels

_MODEL_PREFIX = "model."
#: Candidate pairs embedded at once when scoring (bounds temporary memory).
COMPOSE_CHUNK = 1 << 16
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


def relu_mlp(in_dim: int, out_dim: int, layers: int, hidden_dim: int) -> nn.Sequential:
    """``layers`` Linear layers, each followed by ReLU (the czsl ``MLP`` with relu=True)."""
    modules: list[nn.Module] = []
    width = in_dim
    for index in range(max(layers, 1)):
        last = index == max(layers, 1) - 1
        out = out_dim if last else hidden_dim
        modules += [nn.Linear(width, out), nn.ReLU()]
        width = out
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


class FeatureMethod(TrainableMethod):
    """Base of methods that train a small model on cached image features.

    Subclasses build the model (``_build``), give the training targets (``_targets``) and
    loss (``training_loss`` of a (features, targets) batch), and score candidate pairs in
    two steps: a per-pair representation computed once per candidate set (``_pair_side``,
    cached) and the scores of a block of image features against it (``_block_scores``).

    Training is the shared loop (``bench.methods.training``): Adam with L2 ``weight_decay``
    on shuffled batches of the train split's cached features, the model in train mode
    during the epoch and in eval mode for validation.
    """

    needs_text_encoder = False

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__(method_hparams(self.name, hparams))
        self.dataset: Any = None
        self.model: nn.Module | None = None
        self.device = torch.device("cpu")
        self.pair_cache = CandidateCache()
        self._train_batches: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def config_extras(
        cls,
        hparams: Mapping[str, Any],
        *,
        dataset: Any,
        backbone: Any,
        word_vectors_spec: str | None,
    ) -> dict[str, Any]:
        """``{"word_vectors": {"spec", "source"}}`` for methods with a ``word_vectors``
        hyperparameter: a result made with other vectors is never the same cell."""
        if "word_vectors" not in hparams:
            return {}
        choice = choose_word_vectors(cls.name, hparams, word_vectors_spec, dataset, backbone)
        return {"word_vectors": {"spec": choice.spec, "source": choice.source}}

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
    def _pair_side(self, pairs: torch.Tensor) -> Any:
        """What scoring needs per candidate pair (eval mode, no gradients)."""

    @abc.abstractmethod
    def _block_scores(self, features: torch.Tensor, pair_side: Any) -> torch.Tensor:
        """(n, P) scores of prepared image features against ``_pair_side``'s output."""

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
        self.invalidate()
        self.apply_pending_state()

    def is_prepared(self) -> bool:
        """Whether ``prepare`` has built the model."""
        return self.model is not None

    def invalidate(self) -> None:
        """Mark the model as changed (drops cached pair representations)."""
        self.pair_cache.invalidate()

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

    def apply_trainable_state(self, state: Mapping[str, Any]) -> None:
        """Check the vocabulary of ``trainable_state()``'s output and load its tensors."""
        model = self._require_model()
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
            model.load_state_dict(tensors)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise BenchError(f"saved {self.name} state does not fit this model: {first}") from exc

    # ------------------------------------------------------------------ training hooks
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The model's parameters that require gradients."""
        return [p for p in self._require_model().parameters() if p.requires_grad]

    def start_training(self, ctx: FitContext) -> None:
        """The prepared train features and their targets, on the device."""
        train = ctx.features["train"]
        features = prepare_features(torch.as_tensor(train.features)).to(self.device)
        if features.shape[0] == 0:
            raise BenchError(f"dataset {getattr(ctx.dataset, 'name', '?')} has no training images")
        targets = self._targets(ctx, np.asarray(train.attr_idx), np.asarray(train.obj_idx))
        self._train_batches = features, targets.to(self.device)

    def epoch_batches(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        """Shuffled (prepared features, targets) batches of ``batch_size`` rows."""
        assert self._train_batches is not None
        return shuffled_batches(generator, int(self.hparams["batch_size"]), *self._train_batches)

    def start_epoch(self, epoch: int) -> None:
        """The model trains (dropout on) during the epoch."""
        self._require_model().train()

    def finish_epoch(self, epoch: int) -> None:
        """The model is validated in eval mode."""
        self._require_model().eval()

    # ------------------------------------------------------------------ scoring
    def score(
        self, image_features: torch.Tensor, pairs: np.ndarray, block_size: int = 1024
    ) -> Iterator[np.ndarray]:
        """Yield float32 (n_i, P) score blocks in image order.

        Blocks have at most ``block_size`` rows, fewer when P is large (see ``block_rows``).
        """
        rows = block_rows(block_size, len(pairs))
        model = self._require_model()
        model.eval()
        side = self.pair_cache.get(pairs, lambda: self._pair_side_of(pairs))
        image_features = torch.as_tensor(image_features)
        for start in range(0, image_features.shape[0], rows):
            with torch.no_grad():
                block = prepare_features(image_features[start : start + rows].to(self.device))
                scores = self._block_scores(block, side).float().cpu().numpy()
            yield scores

    def _pair_side_of(self, pairs: np.ndarray) -> Any:
        with torch.no_grad():
            return self._pair_side(as_pair_tensor(pairs, self.device))


class EmbeddingDistanceMethod(FeatureMethod):
    """Base of LE+ and AoP: a pair's score is minus the squared Euclidean distance between
    ``model.image_embedder(x)`` and ``model.compose(pair)``.
    """

    def _pair_side(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self._require_model()
        parts = [model.compose(part) for part in pairs.split(COMPOSE_CHUNK)]
        embeddings = torch.cat(parts) if parts else model.compose(pairs)
        return embeddings.t().contiguous(), (embeddings**2).sum(dim=1)

    def _block_scores(
        self, features: torch.Tensor, pair_side: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        model = self._require_model()
        pair_t, pair_sq = pair_side
        images = model.image_embedder(features)
        # -||x - p||^2 = 2 x.p - ||p||^2 - ||x||^2
        scores = images @ pair_t
        scores.mul_(2.0).sub_(pair_sq[None, :]).sub_((images**2).sum(dim=1, keepdim=True))
        return scores
