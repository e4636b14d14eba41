"""The evaluation protocol of a cell: the CSP paper's, or the harness's faster one.

``paper`` reproduces what the official CSP code (BatsResearch/csp) does: the last epoch is
evaluated, training images are freshly augmented views in the official transform order,
names are cleaned only by "." -> space and lowercasing, and open world is filtered with the
GloVe 6B-300d feasibility calibration and the official score rule (``csp-multiply``).
``harness`` keeps the best closed-world val-AUC epoch, trains on cached un-augmented
features, cleans "." and "_" and leaves open world unfiltered unless asked: it is faster,
and it is a different protocol (on the synthetic set it moved CSP's test AUC by about +18
points against the official loop).

Every result records its :class:`Protocol` (``as_record``), which is also part of the
cell's config hash, so cells of the two protocols never mix. ``matches_paper`` is true only
when every field equals the official protocol for that method; ``deviations`` says why not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.constants import AUGMENT_CHOICES, FEASIBILITY_CHOICES
from bench.errors import BenchError

#: ``--protocol`` choices.
PROTOCOL_CHOICES: tuple[str, ...] = ("paper", "harness")
#: ``epoch_selection``: evaluate the last epoch, or the one with the best closed-world val AUC.
EPOCH_SELECTION_CHOICES: tuple[str, ...] = ("last", "val-auc")
#: ``name_cleaning``: "official" = "." -> space + lowercase; "words" also splits "_" and
#: collapses whitespace.
NAME_CLEANING_CHOICES: tuple[str, ...] = ("official", "words")
#: The word vectors of the official feasibility calibration (GloVe 6B, 300-d).
PAPER_WORD_VECTORS = "glove:6B.300d"
#: What stands in for them offline (same corpus, 50-d).
OFFLINE_WORD_VECTORS = "glove50"
#: The methods of the CSP paper (the only ones a paper protocol can match).
PAPER_METHODS: tuple[str, ...] = ("clip", "coop", "csp")
#: The dataset-card kind that runs the paper protocol by default (the real datasets).
PAPER_DATASET_KIND = "download"


@dataclass(frozen=True)
class Protocol:
    """How a cell is trained and evaluated.

    Attributes:
        name: "paper" or "harness" (the ``--protocol`` it started from).
        epoch_selection: "last" or "val-auc".
        augment: "none" (cached features) or "paper" (augmented views, official order).
        precision: What the numbers were computed in: "fp32" on the CPU; on CUDA "fp16" (the
            paper protocol: float16 autocast, scores rounded to fp16 as the official code's
            fp16 logits are) or "<dtype>-autocast".
        name_cleaning: "official" or "words".
        feasibility_filter: Open-world filter (``FEASIBILITY_CHOICES``), None for none.
        word_vectors: Word-vector spec of the feasibility scores, None for none.
        feasibility_names: How names become words for those vectors ("official": the CSP
            name map, split on "_" only; "words": card aliases, split on punctuation).
    """

    name: str
    epoch_selection: str
    augment: str
    precision: str
    name_cleaning: str
    feasibility_filter: str | None
    word_vectors: str | None
    feasibility_names: str

    def as_record(self, method: str, trains: bool) -> dict[str, Any]:
        """The ``protocol`` object of a result (and of the hashed cell config)."""
        reasons = paper_deviations(self, method, trains)
        return {
            "name": self.name,
            "epoch_selection": self.epoch_selection,
            "augment": self.augment,
            "precision": self.precision,
            "name_cleaning": self.name_cleaning,
            "feasibility": {
                "filter": self.feasibility_filter,
                "word_vectors": self.word_vectors,
                "names": self.feasibility_names,
            },
            "matches_paper": not reasons,
            "deviations": reasons,
        }


def default_protocol_name(dataset_kind: str | None) -> str:
    """``paper`` on the real datasets (card kind "download"), ``harness`` elsewhere."""
    return "paper" if dataset_kind == PAPER_DATASET_KIND else "harness"


def backbone_precision(name: str) -> str | None:
    """The CUDA precision protocol ``name`` loads the backbone in (``LoadRequest.precision``):
    "fp16" for ``paper`` (the official code runs CLIP in fp16), None (the device's default)
    otherwise."""
    return "fp16" if name == "paper" else None


def build_protocol(
    name: str,
    *,
    device: str = "cpu",
    autocast: str | None = None,
    augment: str | None = None,
    feasibility: str | None = None,
    word_vectors: str | None = None,
    offline_word_vectors: bool = False,
) -> Protocol:
    """The protocol ``name`` with the explicit options that override its fields.

    Args:
        name: "paper" or "harness".
        device: The training device ("cpu", "cuda"...).
        autocast: The backbone's mixed-precision dtype name on that device (e.g.
            "bfloat16"), None for full precision.
        augment: ``--augment`` if given.
        feasibility: ``--feasibility`` if given.
        word_vectors: ``--word-vectors`` if given.
        offline_word_vectors: The paper's GloVe 6B-300d cannot be had (offline): glove50
            stands in (recorded as a deviation).

    Raises:
        BenchError: An unknown protocol or option value.
    """
    if name not in PROTOCOL_CHOICES:
        raise BenchError(f"unknown protocol {name!r}; use one of {PROTOCOL_CHOICES}")
    if augment is not None and augment not in AUGMENT_CHOICES:
        raise BenchError(f"unknown augment mode {augment!r}; use one of {AUGMENT_CHOICES}")
    if feasibility is not None and feasibility not in FEASIBILITY_CHOICES:
        raise BenchError(f"unknown feasibility {feasibility!r}; use one of {FEASIBILITY_CHOICES}")
    if device == "cpu" or autocast is None:
        precision = "fp32"
    elif autocast == "float16" and backbone_precision(name) == "fp16":
        precision = "fp16"
    else:
        precision = f"{autocast}-autocast"
    if name == "paper":
        vectors = word_vectors or (
            OFFLINE_WORD_VECTORS if offline_word_vectors else PAPER_WORD_VECTORS
        )
        return Protocol(
            name=name,
            epoch_selection="last",
            augment=augment or "paper",
            precision=precision,
            name_cleaning="official",
            feasibility_filter=feasibility or "csp-multiply",
            word_vectors=vectors,
            feasibility_names="official",
        )
    return Protocol(
        name=name,
        epoch_selection="val-auc",
        augment=augment or "none",
        precision=precision,
        name_cleaning="words",
        feasibility_filter=(feasibility or "mask") if word_vectors else None,
        word_vectors=word_vectors,
        feasibility_names="words",
    )


def paper_deviations(protocol: Protocol, method: str, trains: bool) -> list[str]:
    """Why ``protocol`` is not the official CSP protocol for ``method`` ([] if it is).

    Training fields (epoch, augment) only count for methods that train.
    """
    if method not in PAPER_METHODS:
        return [f"method {method} is not in the CSP paper"]
    official = build_protocol("paper")
    reasons = []
    checked = ["name_cleaning", "feasibility_filter", "feasibility_names"]
    if trains:
        checked = ["epoch_selection", "augment", *checked]
    for key in checked:
        mine, theirs = getattr(protocol, key), getattr(official, key)
        if mine != theirs:
            reasons.append(f"{key} {mine or 'none'} (paper: {theirs})")
    if protocol.word_vectors != PAPER_WORD_VECTORS:
        stand_in = " standing in offline" if protocol.word_vectors == OFFLINE_WORD_VECTORS else ""
        reasons.append(
            f"word_vectors {protocol.word_vectors or 'none'}{stand_in} "
            f"(paper: {PAPER_WORD_VECTORS})"
        )
    if protocol.precision != "fp16":
        where = " on the CPU" if protocol.precision == "fp32" else ""
        reasons.append(f"precision {protocol.precision}{where} (paper: fp16 CLIP on CUDA)")
    return reasons
