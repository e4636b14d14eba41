"""CSP: Compositional Soft Prompting (Nayak, Yu & Bach, ICLR 2023).

One trainable vocabulary matrix ``[n_attr + n_obj, width]`` (attributes first), each row
initialised to the mean token embedding of its name. A pair's prompt is the tokenised
template "a photo of x x" with the attribute's row at the token two before end-of-text and
the object's row just before it; the frozen text encoder's end-of-text feature is the pair's
text feature. Dropout (``attr_dropout``) acts on the whole vocabulary matrix in training.
Higher-order triples use "a photo of x x x" with the rows of attribute, second attribute
and object at the three tokens before end-of-text, as the official ``aao`` script does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from bench.errors import BenchError
from bench.methods.base import FitContext
from bench.methods.clip_family import (
    SOFT_TEMPLATE,
    SOFT_TRIPLE_TEMPLATE,
    PromptTemplate,
    SoftPromptMethod,
    TriplePrompts,
    dropout,
)
from bench.prefix_text import PromptRows, Slot, fill_template


class CSP(TriplePrompts, SoftPromptMethod):
    """Compositional soft prompting: only the attribute/object vocabulary trains.

    Hyperparameters (see methods/csp.toml): ``epochs``, ``lr``, ``weight_decay``,
    ``attr_dropout``, ``batch_size``, ``gradient_accumulation_steps``, ``context_length``.
    """

    name = "csp"

    def _setup(self, ctx: FitContext) -> None:
        backbone, dataset = self.backbone, self.dataset
        self.attrs = list(dataset.attrs)
        self.objs = list(dataset.objs)
        self.template = PromptTemplate.build(
            backbone, SOFT_TEMPLATE, int(self.hparams.get("context_length", 0) or 0)
        )
        if self.template.eot < 3:
            raise BenchError(f"template {SOFT_TEMPLATE!r} tokenised too short for CSP")
        with torch.no_grad():
            rows = [
                backbone.name_embedding(name, self.name_cleaning).float()
                for name in self.attrs + self.objs
            ]
        self.vocabulary = torch.nn.Parameter(torch.stack(rows).to(backbone.device))
        self.triple_template: PromptTemplate | None = None

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.vocabulary]

    def _prompt_inputs(self, train: bool) -> tuple[torch.Tensor, ...]:
        if not train:
            return (self.vocabulary,)
        p = float(self.hparams.get("attr_dropout", 0.0))
        return (dropout(self.vocabulary, p, self._dropout_generator),)

    def _prompt_embeddings(
        self, pairs: torch.Tensor, *inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        (vocabulary,) = inputs
        tokens, embeddings = self.template.batch(pairs.shape[0])
        eot = self.template.eot
        embeddings[:, eot - 2, :] = vocabulary[pairs[:, 0]].to(embeddings.dtype)
        embeddings[:, eot - 1, :] = vocabulary[pairs[:, 1] + len(self.attrs)].to(embeddings.dtype)
        return tokens, embeddings

    def _prompt_rows(self, pairs: torch.Tensor, *inputs: torch.Tensor) -> PromptRows:
        # both slots read the one vocabulary table: a row's gradient sums over its uses
        (vocabulary,) = inputs
        eot = self.template.eot
        slots = [
            Slot((eot - 2,), vocabulary, pairs[:, 0]),
            Slot((eot - 1,), vocabulary, pairs[:, 1] + len(self.attrs)),
        ]
        return fill_template(self.template.tokens, self.template.embeddings, slots)

    def _triple_text_features(self, triples: torch.Tensor) -> torch.Tensor:
        if self.triple_template is None:
            context_length = int(self.hparams.get("context_length", 0) or 0)
            self.triple_template = PromptTemplate.build(
                self.backbone, SOFT_TRIPLE_TEMPLATE, context_length
            )
        vocabulary = self.vocabulary
        rows = [
            vocabulary[triples[:, 0]],
            vocabulary[triples[:, 1]],
            vocabulary[triples[:, 2] + len(self.attrs)],
        ]
        tokens, embeddings = self.triple_template.with_slots(rows)
        return self.backbone.encode_text_embeddings(embeddings, tokens).float()

    def trainable_state(self) -> dict[str, Any]:
        """``{"vocabulary": (n_attr + n_obj, width) tensor, "attrs": [...], "objs": [...]}``."""
        if self.backbone is None:
            return {}
        return {
            "vocabulary": self.vocabulary.detach().cpu().clone(),
            "attrs": list(self.attrs),
            "objs": list(self.objs),
        }

    def apply_trainable_state(self, state: Mapping[str, Any]) -> None:
        dataset_name = getattr(self.dataset, "name", "?")
        if "vocabulary" not in state:
            raise BenchError("saved CSP state has no 'vocabulary'; it is not a CSP artifact")
        saved = torch.as_tensor(state["vocabulary"])
        if tuple(saved.shape) != tuple(self.vocabulary.shape):
            raise BenchError(
                f"saved vocabulary has shape {tuple(saved.shape)} but dataset "
                f"{dataset_name} with backbone {self.backbone_name()} needs "
                f"{tuple(self.vocabulary.shape)}"
            )
        for kind, mine in (("attrs", self.attrs), ("objs", self.objs)):
            theirs = list(state.get(kind, mine))
            if theirs != mine:
                first = next(i for i, (a, b) in enumerate(zip(theirs, mine, strict=True)) if a != b)
                raise BenchError(
                    f"saved vocabulary {kind} differ from dataset {dataset_name}: "
                    f"entry {first} is {theirs[first]!r} but the dataset has {mine[first]!r}"
                )
        with torch.no_grad():
            self.vocabulary.copy_(saved.to(self.vocabulary.device, self.vocabulary.dtype))
