"""toy-clip: a small CLIP that the harness pretrains itself, on images it renders itself.

Pretrained CLIP weights cannot be downloaded offline, and a randomly initialised CLIP is at
chance, so the harness ships a recipe instead of weights: a tiny open_clip ViT config
(``configs/toy-clip.json``) trained contrastively (symmetric InfoNCE, learnable temperature,
AdamW, warmup + cosine schedule) on an image-caption corpus drawn from the synthetic
renderer (:func:`bench.data.synthetic.render`).

The corpus never shows a pair that is an unseen val/test pair of a shipped synthetic
benchmark (see :func:`excluded_pairs`), so zero-shot accuracy on those pairs measures
compositional generalisation, as with a web-pretrained CLIP. Its images are fresh renders
from their own random stream, not the benchmark's images. Some colour images also carry a
pattern, captioned with both attributes ("a red striped star"), so the model learns second
attributes; it never shows a higher-order triple of those benchmarks (see
:func:`excluded_triples`), nor a pattern on an excluded pair's object.

The result is cached in ``<cache_dir>/toy-clip-<hash>/`` (an open_clip ``local-dir``: config,
safetensors weights, plus ``manifest.json`` with the hash of everything it was made from),
written atomically and rebuilt when the manifest or the weights do not check out.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import __version__
from bench.backbones.base import BackboneSource, LoadRequest
from bench.backbones.build import quiet
from bench.backbones.openclip import (
    CONFIG_DIR,
    BuiltModel,
    OpenClipBackbone,
    assemble_backbone,
    create_model,
    load_weights,
    register_configs,
)
from bench.backbones.spec import BackboneSpec
from bench.device import resolve_device
from bench.errors import BenchError
from bench.io import atomic_directory, atomic_write_json, sha256_file, sha256_json

#: open_clip model name of the shipped config (``configs/toy-clip.json``).
MODEL_NAME = "toy-clip"
#: Bumped whenever the training code changes what a recipe produces.
RECIPE_VERSION = 2
#: Environment variable naming the default cache folder.
CACHE_ENV = "BENCH_TOY_CLIP_DIR"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
MANIFEST_FILE = "manifest.json"
#: Random stream of the corpus renders (the benchmark's images use ``0x1A6E``).
RENDER_STREAM = 0x70C1
#: Synthetic dataset cards whose unseen val/test pairs the corpus never shows.
EXCLUDED_DATASETS: tuple[str, ...] = ("synthetic", "synthetic-flat", "synthetic-tiny")

#: Captions of a composition; ``{a}``/``{o}`` are the article of the attribute/object word.
#: None starts with "a photo of": the benchmark prompt ("a photo of {attr} {obj}") is a
#: wording the model never saw, as a hand-written prompt is for a web-pretrained CLIP.
PAIR_TEMPLATES: tuple[str, ...] = (
    "{a} {attr} {obj}",
    "{attr} {obj}",
    "{a} {attr} {obj} on a plain background",
    "an image of {o} {obj} that is {attr}",
    "a picture of {a} {attr} {obj}",
    "the {obj} is {attr}",
    "a drawing of {a} {attr} {obj}",
    "{o} {obj} , {attr}",
    "{a} {attr} coloured {obj}",
    "a rendering of {a} {attr} {obj} shape",
    "there is {a} {attr} {obj}",
    "{a} {attr} {obj} in the middle",
)
#: Captions of a colour with a pattern as second attribute, in the benchmark's prompt order.
TRIPLE_TEMPLATES: tuple[str, ...] = (
    "{a} {attr} {attr2} {obj}",
    "{attr} {attr2} {obj}",
    "a picture of {a} {attr} {attr2} {obj}",
    "a drawing of {a} {attr} {attr2} {obj}",
    "there is {a} {attr} {attr2} {obj}",
    "{a} {attr} {attr2} {obj} on a plain background",
)
#: Captions naming only the attribute.
ATTR_TEMPLATES: tuple[str, ...] = (
    "{a} {attr} shape",
    "something {attr}",
    "a shape that is {attr}",
    "a picture of something {attr}",
)
#: Captions naming only the object.
OBJ_TEMPLATES: tuple[str, ...] = (
    "{o} {obj}",
    "a picture of {o} {obj}",
    "{obj}",
    "{o} {obj} shape",
)

Pair = tuple[str, str]
Triple = tuple[str, str, str]


@dataclass(frozen=True)
class CorpusRecipe:
    """How the image-caption corpus is drawn.

    Attributes:
        image_size: Side of the rendered images (the ``synthetic`` benchmark's 48).
        exclude_datasets: Synthetic dataset cards whose unseen val/test pairs are never shown.
        primitive_weight: Weight of the single-primitive losses. Each step also contrasts
            one image per attribute captioned with the attribute only ("a red shape") and
            one image per object captioned with the object only ("a circle"), each group
            in its own InfoNCE so that no caption has a false negative; 0 turns them off.
        pair_templates: Caption templates of a composition.
        attr_templates: Caption templates naming only the attribute.
        obj_templates: Caption templates naming only the object.
        second_attr_rate: Chance that an image of a colour pair also carries a pattern
            (captioned with ``triple_templates``), where that triple is not excluded.
        triple_templates: Caption templates of a colour, a pattern and an object.
        render_stream: Second word of every render seed ``[seed, render_stream, step]``.
    """

    image_size: int = 48
    exclude_datasets: tuple[str, ...] = EXCLUDED_DATASETS
    primitive_weight: float = 0.0
    pair_templates: tuple[str, ...] = PAIR_TEMPLATES
    attr_templates: tuple[str, ...] = ATTR_TEMPLATES
    obj_templates: tuple[str, ...] = OBJ_TEMPLATES
    second_attr_rate: float = 0.1
    triple_templates: tuple[str, ...] = TRIPLE_TEMPLATES
    render_stream: int = RENDER_STREAM


@dataclass(frozen=True)
class PretrainConfig:
    """The full recipe of one toy-clip build (its hash names the cache folder).

    Attributes:
        seed: Seeds the initialisation and every corpus draw.
        steps: Optimiser steps; each sees ``batch_size`` fresh renders.
        batch_size: Images (of distinct compositions) per step.
        lr: Peak learning rate.
        warmup_steps: Linear warmup steps, then cosine decay to ``min_lr_ratio * lr``.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        weight_decay: AdamW weight decay (open_clip's rule: none on gains, biases, 1-d
            parameters and the temperature).
        betas: AdamW betas.
        eps: AdamW epsilon.
        max_logit_scale: Clamp of the learnable inverse temperature (CLIP's 100).
        corpus: The corpus recipe.
    """

    seed: int = 0
    steps: int = 600
    batch_size: int = 80
    lr: float = 1e-3
    warmup_steps: int = 40
    min_lr_ratio: float = 0.02
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    max_logit_scale: float = 100.0
    corpus: CorpusRecipe = field(default_factory=CorpusRecipe)


# ------------------------------------------------------------------------------ recipe
def model_config() -> dict[str, Any]:
    """The open_clip config of toy-clip (``configs/toy-clip.json``)."""
    return json.loads((CONFIG_DIR / f"{MODEL_NAME}.json").read_text(encoding="utf-8"))


def _excluded_plans(recipe: CorpusRecipe) -> list[Any]:
    """Split plans of the cards in ``recipe.exclude_datasets`` (named-vocabulary ones)."""
    from bench.data.registry import is_registered, synthetic_params
    from bench.data.synthetic import get_preset, plan_synthetic

    plans = []
    for name in recipe.exclude_datasets:
        if not is_registered(name):
            continue
        params = synthetic_params(name)
        if get_preset(params["preset"]).vocabulary == "words":
            plans.append(plan_synthetic(params["preset"], seed=params["seed"]))
    return plans


def excluded_pairs(recipe: CorpusRecipe | None = None) -> tuple[Pair, ...]:
    """Unseen val/test pairs of the benchmarks in ``recipe.exclude_datasets``, sorted.

    Read from each card's split plan for the card's generator parameters (preset, seed).
    Cards with generated names (``a017``) or missing cards are skipped.
    """
    out: set[Pair] = set()
    for plan in _excluded_plans(recipe or CorpusRecipe()):
        train = set(plan.train_pairs)
        out.update(p for p in (*plan.val_pairs, *plan.test_pairs) if p not in train)
    return tuple(sorted(out))


def excluded_triples(recipe: CorpusRecipe | None = None) -> tuple[Triple, ...]:
    """Higher-order test triples ``(attr, attr2, obj)`` of those benchmarks, sorted."""
    out: set[Triple] = set()
    for plan in _excluded_plans(recipe or CorpusRecipe()):
        out.update(plan.higher_order_triples())
    return tuple(sorted(out))


def corpus_second_attrs(recipe: CorpusRecipe | None = None) -> dict[Pair, tuple[str, ...]]:
    """Patterns the corpus may draw over each colour pair it shows.

    A pattern is left out when the triple is excluded or when the pattern and the object
    form an excluded pair (the image would show that composition too).
    """
    from bench.data.synthetic import COLOURS, PATTERNS

    recipe = recipe or CorpusRecipe()
    pairs = set(excluded_pairs(recipe))
    triples = set(excluded_triples(recipe))
    out: dict[Pair, tuple[str, ...]] = {}
    for attr, obj in corpus_pairs(recipe):
        if attr not in COLOURS:
            continue
        allowed = tuple(
            pattern
            for pattern in sorted(PATTERNS)
            if (attr, pattern, obj) not in triples and (pattern, obj) not in pairs
        )
        if allowed:
            out[(attr, obj)] = allowed
    return out


def corpus_pairs(recipe: CorpusRecipe | None = None) -> tuple[Pair, ...]:
    """Every (attr, obj) composition the corpus shows: all pairs minus the excluded ones."""
    from bench.data.synthetic import SYNTHETIC_ATTRS, SYNTHETIC_OBJS

    excluded = set(excluded_pairs(recipe))
    return tuple(
        (attr, obj)
        for attr in sorted(SYNTHETIC_ATTRS)
        for obj in sorted(SYNTHETIC_OBJS)
        if (attr, obj) not in excluded
    )


def recipe_fingerprint(config: PretrainConfig) -> dict[str, Any]:
    """Everything a build depends on, as JSON-able data (its sha256 is the build hash)."""
    from bench.data.synthetic import GENERATOR_VERSION

    return {
        "model": MODEL_NAME,
        "model_config": model_config(),
        "pretrain": asdict(config),
        "excluded_pairs": [list(p) for p in excluded_pairs(config.corpus)],
        "corpus_pairs": [list(p) for p in corpus_pairs(config.corpus)],
        "excluded_triples": [list(t) for t in excluded_triples(config.corpus)],
        "generator_version": GENERATOR_VERSION,
        "recipe_version": RECIPE_VERSION,
    }


def recipe_hash(config: PretrainConfig) -> str:
    """sha256 of :func:`recipe_fingerprint`."""
    return sha256_json(recipe_fingerprint(config))


# ------------------------------------------------------------------------------ corpus
def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class Corpus:
    """Deterministic batches of (rendered image, caption) from a recipe and a seed.

    Batch ``step`` depends only on ``(seed, step)``: its compositions are distinct, drawn
    from :func:`corpus_pairs`; each image is a fresh render.
    """

    def __init__(self, recipe: CorpusRecipe, seed: int, transform: Any) -> None:
        self.recipe = recipe
        self.seed = seed
        self.transform = transform
        self.pairs = corpus_pairs(recipe)
        self.second_attrs = corpus_second_attrs(recipe) if recipe.second_attr_rate > 0 else {}
        if not self.pairs:
            raise BenchError("toy-clip corpus is empty: every composition is excluded")

    def caption(
        self,
        attr: str,
        obj: str,
        rng: np.random.Generator,
        kind: str = "pair",
        attr2: str | None = None,
    ) -> str:
        """A caption of ``attr obj`` naming both (``pair``), the ``attr`` or the ``obj``;
        with ``attr2``, one naming ``attr attr2 obj``."""
        templates = {
            "pair": self.recipe.pair_templates,
            "attr": self.recipe.attr_templates,
            "obj": self.recipe.obj_templates,
        }[kind]
        if attr2 is not None:
            templates = self.recipe.triple_templates
        template = templates[int(rng.integers(len(templates)))]
        return template.format(attr=attr, attr2=attr2, obj=obj, a=_article(attr), o=_article(obj))

    def _render(
        self, pair: Pair, rng: np.random.Generator, attr2: str | None = None
    ) -> torch.Tensor:
        from bench.data.synthetic import render

        return self.transform(render(pair[0], pair[1], rng, self.recipe.image_size, attr2))

    def _second_attr(self, pair: Pair, rng: np.random.Generator) -> str | None:
        """A pattern for ``pair``'s image with chance ``second_attr_rate`` (None: plain)."""
        allowed = self.second_attrs.get(pair)
        if not allowed or rng.random() >= self.recipe.second_attr_rate:
            return None
        return allowed[int(rng.integers(len(allowed)))]

    def batch(self, step: int, size: int) -> tuple[torch.Tensor, list[str], list[Pair]]:
        """Images ``(size, 3, H, W)``, captions and compositions of batch ``step``."""
        rng = np.random.default_rng([self.seed, self.recipe.render_stream, step])
        n = len(self.pairs)
        order = np.concatenate(
            [rng.permutation(n) for _ in range(-(-size // n))]  # distinct within each n
        )[:size]
        pairs = [self.pairs[int(i)] for i in order]
        second = [self._second_attr(pair, rng) for pair in pairs]
        images = [self._render(pair, rng, attr2) for pair, attr2 in zip(pairs, second, strict=True)]
        captions = [
            self.caption(attr, obj, rng, attr2=attr2)
            for (attr, obj), attr2 in zip(pairs, second, strict=True)
        ]
        return torch.stack(images), captions, pairs

    def primitive_batches(self, step: int) -> list[tuple[torch.Tensor, list[str], list[Pair]]]:
        """Two groups of step ``step``: one image per attribute captioned with the attribute
        only, and one per object captioned with the object only (random partners)."""
        rng = np.random.default_rng([self.seed, self.recipe.render_stream, step, 1])
        groups = []
        for kind, position in (("attr", 0), ("obj", 1)):
            names = sorted({pair[position] for pair in self.pairs})
            pairs = []
            for name in names:
                partners = [pair for pair in self.pairs if pair[position] == name]
                pairs.append(partners[int(rng.integers(len(partners)))])
            images = [self._render(pair, rng) for pair in pairs]
            captions = [self.caption(attr, obj, rng, kind) for attr, obj in pairs]
            groups.append((torch.stack(images), captions, pairs))
        return groups


# ------------------------------------------------------------------------------ training
def _create_model(seed: int) -> nn.Module:
    """A freshly initialised toy-clip (CPU, fp32), initialised from ``seed``."""
    import open_clip

    register_configs()
    with quiet(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(
            MODEL_NAME, pretrained=None, precision="fp32", device="cpu", weights_only=True
        )


def _eval_transform(model: nn.Module) -> Any:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's split: no decay on gains, biases, 1-d params and the temperature."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if skip else decay).append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def _lr_at(step: int, config: PretrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr_ratio * lr``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * progress))


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of matching rows of unit-norm image and text features."""
    logits = logit_scale.exp() * image @ text.t()
    labels = torch.arange(image.shape[0], device=image.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


@contextlib.contextmanager
def _step_bar(config: PretrainConfig, show: bool | Any) -> Iterator[Any]:
    """A rich progress bar (step, loss) on stderr; yields ``update(step, loss)``.

    ``show`` may be a running ``rich.progress.Progress``: the bar is then a task in it (one
    live display at a time), removed at the end.
    """
    if show is False or show is None:
        yield lambda step, loss: None
        return
    if hasattr(show, "add_task"):
        task = show.add_task("pretraining toy-clip", total=config.steps)

        def update_task(step: int, loss: float) -> None:
            show.update(task, completed=step, description=f"pretraining toy-clip, loss {loss:.3f}")

        try:
            yield update_task
        finally:
            show.remove_task(task)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("pretraining toy-clip"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("step loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        task = progress.add_task("pretrain", total=config.steps, loss="-")

        def update(step: int, loss: float) -> None:
            progress.update(task, completed=step, loss=f"{loss:.3f}")

        yield update


Group = tuple[torch.Tensor, list[str], list[Pair]]


@contextlib.contextmanager
def _prefetched(corpus: Corpus, config: PretrainConfig) -> Iterator[Iterator[list[Group]]]:
    """Yield an iterator over each step's groups, rendered one step ahead in a thread.

    Batch ``step`` depends only on ``(seed, step)``, so rendering ahead changes nothing.
    """

    def make(step: int) -> list[Group]:
        groups = [corpus.batch(step, config.batch_size)]
        if config.corpus.primitive_weight > 0:
            groups += corpus.primitive_batches(step)
        return groups

    def steps() -> Iterator[list[Group]]:
        pending = pool.submit(make, 0)
        for step in range(config.steps):
            groups = pending.result()
            if step + 1 < config.steps:
                pending = pool.submit(make, step + 1)
            yield groups

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="toy-clip-render") as pool:
        yield steps()


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch threads (one core is left to the render thread)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pretrain(
    config: PretrainConfig, *, show_progress: bool | Any = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Train toy-clip from scratch on the rendered corpus (deterministic from ``seed``).

    Global random state (python, numpy, torch) is left as it was.

    Returns:
        The trained model (eval mode, CPU) and a log: seconds, losses, final temperature.
    """
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]), quiet():
        model = _create_model(config.seed)
        model.train()
        tokenizer = _tokenizer()
        corpus = Corpus(config.corpus, config.seed, _eval_transform(model))
        optimizer = torch.optim.AdamW(
            _param_groups(model, config.weight_decay),
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
        )
        max_log_scale = math.log(config.max_logit_scale)
        losses: list[float] = []
        with (
            _step_bar(config, show_progress) as update,
            _prefetched(corpus, config) as batches,
            _threads(max(1, torch.get_num_threads() - 1)),
        ):
            for step in range(config.steps):
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(step, config)
                groups = next(batches)
                weights = [1.0] + [config.corpus.primitive_weight / 2] * (len(groups) - 1)
                images = torch.cat([group[0] for group in groups])
                tokens = tokenizer([caption for group in groups for caption in group[1]])
                image_features = model.encode_image(images, normalize=True)
                text_features = model.encode_text(tokens, normalize=True)
                loss = image_features.new_zeros(())
                offset = 0
                for (group_images, _, _), weight in zip(groups, weights, strict=True):
                    part = slice(offset, offset + group_images.shape[0])
                    offset = part.stop
                    loss = loss + weight * clip_loss(
                        image_features[part], text_features[part], model.logit_scale
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0.0, max_log_scale)
                losses.append(float(loss.detach()))
                update(step + 1, losses[-1])
    model.eval()
    window = losses[-20:]
    log = {
        "seconds": round(time.perf_counter() - started, 2),
        "steps": config.steps,
        "images_seen": config.steps * config.batch_size,
        "final_loss": float(np.mean(window)) if window else None,
        "loss_every_20_steps": [round(x, 4) for x in losses[::20]],
        "logit_scale": float(model.logit_scale.detach().exp()),
        "torch_threads": torch.get_num_threads(),
    }
    return model, log


def _tokenizer() -> Any:
    import open_clip

    register_configs()
    with quiet():
        return open_clip.get_tokenizer(MODEL_NAME)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ cache
def default_cache_dir() -> Path:
    """``$BENCH_TOY_CLIP_DIR`` if set, else ``./results/cache/backbones``."""
    return Path(os.environ.get(CACHE_ENV) or Path("results") / "cache" / "backbones").expanduser()


def cache_folder(cache_dir: Path | None, config: PretrainConfig) -> Path:
    """``<cache_dir>/toy-clip-<hash[:12]>``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"{MODEL_NAME}-{recipe_hash(config)[:12]}"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a cache folder, or None if missing or unreadable."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def check_folder(folder: Path, config: PretrainConfig) -> str | None:
    """Why ``folder`` is not a valid build of ``config`` (None if it is).

    Valid: the manifest's hash is the recipe's, the config file matches, and the weights
    file's sha256 is the manifest's.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "missing"
    manifest = read_manifest(folder)
    if manifest is None:
        return "no readable manifest"
    if manifest.get("hash") != recipe_hash(config):
        return "manifest hash differs from the recipe"
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable open_clip config"
    if saved.get("model_cfg") != model_config():
        return "open_clip config differs"
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        return "weights file missing"
    if sha256_file(weights) != manifest.get("weights_sha256"):
        return "weights file is corrupt (sha256 differs from the manifest)"
    return None


def _open_clip_config(model: nn.Module) -> dict[str, Any]:
    preprocess = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    preprocess.pop("size", None)
    return {"model_cfg": model_config(), "preprocess_cfg": preprocess}


def _write_build(folder: Path, config: PretrainConfig, show_progress: bool | Any) -> None:
    """Pretrain and write config, weights and manifest into the empty ``folder``."""
    from safetensors.torch import save_file

    model, log = pretrain(config, show_progress=show_progress)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    save_file(state, str(weights))
    atomic_write_json(folder / CONFIG_FILE, _open_clip_config(model))
    fingerprint = recipe_fingerprint(config)
    manifest = {
        "model": MODEL_NAME,
        "hash": sha256_json(fingerprint),
        "weights_sha256": sha256_file(weights),
        "recipe": fingerprint,
        "parameters": parameter_count(model),
        "training": log,
        "bench_version": __version__,
        "torch_version": torch.__version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(folder / MANIFEST_FILE, manifest)


def ensure_toy_clip(
    cache_dir: Path | None = None,
    config: PretrainConfig | None = None,
    *,
    force: bool = False,
    show_progress: bool | Any = True,
    console: Any = None,
) -> tuple[Path, bool]:
    """Return the cache folder of a valid toy-clip build, pretraining it if needed.

    The build goes into a temporary sibling folder, renamed into place when complete; a
    folder that fails :func:`check_folder` is replaced. If another process finishes the
    same folder first, its result is kept.

    Args:
        cache_dir: Parent folder (None: :func:`default_cache_dir`).
        config: The recipe (default ``PretrainConfig()``).
        force: Rebuild even if a valid build exists.
        show_progress: Show a rich progress bar (step, loss) while pretraining; or a
            running ``rich.progress.Progress`` to add the bar to.
        console: rich console for one-line notices (default: stderr).

    Returns:
        ``(folder, built)``: ``built`` is False when a cached build was reused.
    """
    config = config or PretrainConfig()
    folder = cache_folder(cache_dir, config)
    problem = "forced rebuild" if force else check_folder(folder, config)
    if problem is None:
        return folder, False
    if console is None:  # print above a running progress display, not through it
        console = getattr(show_progress, "console", None)
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    if problem != "missing":
        console.print(f"[yellow]toy-clip:[/] rebuilding {folder} ({problem})")
    console.print(
        f"toy-clip: pretraining (seed {config.seed}, {config.steps} steps of "
        f"{config.batch_size} rendered images) into {folder}; a few minutes on a CPU, once"
    )
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(
            f"cannot create the toy-clip cache folder {folder.parent} ({exc.strerror or exc}); "
            f"pass a writable --results-dir or set {CACHE_ENV}"
        ) from None
    with atomic_directory(
        folder, is_complete=lambda built: check_folder(built, config) is None, force=force
    ) as tmp:
        _write_build(tmp, config, show_progress)
    return folder, True


# ------------------------------------------------------------------------------ loading
def parse_toy_clip_spec(raw: str) -> BackboneSpec | None:
    """``toy-clip`` or ``toy-clip:SEED`` as a spec (the seed is checked when loading)."""
    if raw != MODEL_NAME and not raw.startswith(f"{MODEL_NAME}:"):
        return None
    return BackboneSpec(raw, "toy-clip", MODEL_NAME, raw[len(MODEL_NAME) + 1 :] or None)


def seed_from_spec(spec: BackboneSpec) -> int:
    """The pretraining seed of ``toy-clip`` (0) or ``toy-clip:SEED``."""
    if not spec.pretrained:
        return 0
    try:
        seed = int(spec.pretrained)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**32:
        raise BenchError(
            f"--backbone {spec.raw}: expected toy-clip or toy-clip:SEED (a pretraining seed, "
            "a non-negative integer)"
        )
    return seed


def load_toy_clip(
    spec: BackboneSpec | str = MODEL_NAME,
    device: torch.device | str | None = None,
    cache_dir: Path | None = None,
    *,
    show_progress: bool | Any = True,
    precision: str | None = None,
) -> OpenClipBackbone:
    """Load toy-clip as a frozen backbone, pretraining it on first use.

    Args:
        spec: ``toy-clip`` or ``toy-clip:SEED`` (parsed or not).
        device: Torch device (None: CUDA when available, else the CPU).
        cache_dir: Parent of the cache folder (None: ``$BENCH_TOY_CLIP_DIR`` or
            ``./results/cache/backbones``).
        show_progress: Show a progress bar if it has to be pretrained (or a running
            ``rich.progress.Progress`` to add it to).
        precision: "fp16" for float16 autocast on CUDA; None for the device's default.

    Raises:
        BenchError: A malformed spec or an unwritable cache folder.
    """
    raw = spec.raw if isinstance(spec, BackboneSpec) else spec.strip()
    parsed = spec if isinstance(spec, BackboneSpec) else parse_toy_clip_spec(raw)
    if parsed is None or parsed.source != "toy-clip":
        raise BenchError(f"--backbone {raw} is not toy-clip")
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    config = PretrainConfig(seed=seed_from_spec(parsed))
    register_configs()
    for attempt in range(2):
        folder, _ = ensure_toy_clip(
            cache_dir, config, force=attempt > 0, show_progress=show_progress
        )
        manifest = read_manifest(folder) or {}
        model = create_model(parsed, MODEL_NAME, cache_dir=None)
        try:
            load_weights(parsed, model, str(folder / WEIGHTS_FILE))
        except BenchError:
            if attempt:
                raise
            continue  # checked out but does not load: rebuild once
        digest = str(manifest.get("weights_sha256"))
        built = BuiltModel(model, digest, False, MODEL_NAME, label="toy-clip")
        return assemble_backbone(parsed, built, torch_device, None, precision)
    raise AssertionError("unreachable")  # pragma: no cover


def _load(spec: BackboneSpec, request: LoadRequest) -> OpenClipBackbone:
    return load_toy_clip(
        spec,
        request.device,
        request.cache_dir,
        show_progress=request.show_progress,
        precision=request.precision,
    )


TOY_CLIP = BackboneSource(
    name="toy-clip",
    parse=parse_toy_clip_spec,
    load=_load,
    description="small CLIP pretrained by the harness on rendered shapes, offline, cached "
    "(toy-clip:SEED for another pretraining seed; default on synthetic datasets)",
    examples=("toy-clip",),
)
