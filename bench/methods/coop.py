"""CoOp for CZSL (Zhou et al., IJCV 2022), as the CSP paper runs it.

Three learnable context vectors, initialised from the token embeddings of "a photo of",
replace the template's first three words; the attribute and object words are frozen
vectors (the mean token embedding of each name) at the two positions before end-of-text,
in the tokenised template "a photo of x x". Only the (3, width) context trains.
Higher-order triples use "a photo of x x x" with the learned context and the frozen vectors
of attribute, second attribute and object at the three tokens before end-of-text.
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
)
from bench.prefix_text import PromptRows, Slot, fill_template

CONTEXT_INIT = "a photo of"


class CoOp(TriplePrompts, SoftPromptMethod):
    """Learned prompt context shared by all pairs; attribute/object words stay frozen.

    Hyperparameters (see methods/coop.toml): ``epochs``, ``lr``, ``weight_decay``,
    ``batch_size``, ``gradient_accumulation_steps``, ``context_length``.
    """

    name = "coop"

    def _setup(self, ctx: FitContext) -> None:
        backbone, dataset = self.backbone, self.dataset
        self.template = self._aligned_template(SOFT_TEMPLATE, 2)
        self.triple_template: PromptTemplate | None = None
        init_tokens = backbone.tokenizer([CONTEXT_INIT]).to(backbone.device)
        with torch.no_grad():
            context = backbone.token_embeddings(init_tokens)[0, 1 : 1 + self.n_ctx].float()
            self.attr_vectors = torch.stack(
                [backbone.name_embedding(a, self.name_cleaning).float() for a in dataset.attrs]
            ).to(backbone.device)
            self.obj_vectors = torch.stack(
                [backbone.name_embedding(o, self.name_cleaning).float() for o in dataset.objs]
            ).to(backbone.device)
        self.context = torch.nn.Parameter(context.clone().to(backbone.device))

    def _aligned_template(self, text: str, n_names: int) -> PromptTemplate:
        """``text`` tokenised, checked to be the context words followed by ``n_names``
        name slots (sets ``n_ctx``)."""
        backbone = self.backbone
        template = PromptTemplate.build(
            backbone, text, int(self.hparams.get("context_length", 0) or 0)
        )
        init_tokens = backbone.tokenizer([CONTEXT_INIT]).to(backbone.device)
        self.n_ctx = int(init_tokens[0].argmax()) - 1
        if template.eot != self.n_ctx + 1 + n_names or not torch.equal(
            template.tokens[0, 1 : 1 + self.n_ctx], init_tokens[0, 1 : 1 + self.n_ctx]
        ):
            raise BenchError(f"cannot align context {CONTEXT_INIT!r} with {text!r}")
        return template

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.context]

    def _prompt_inputs(self, train: bool) -> tuple[torch.Tensor, ...]:
        return (self.context,)

    def _prompt_embeddings(
        self, pairs: torch.Tensor, *inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        (context,) = inputs
        tokens, embeddings = self.template.batch(pairs.shape[0])
        eot = self.template.eot
        dtype = embeddings.dtype
        embeddings[:, 1 : 1 + self.n_ctx, :] = context.to(dtype)
        embeddings[:, eot - 2, :] = self.attr_vectors[pairs[:, 0]].to(dtype)
        embeddings[:, eot - 1, :] = self.obj_vectors[pairs[:, 1]].to(dtype)
        return tokens, embeddings

    def _prompt_rows(self, pairs: torch.Tensor, *inputs: torch.Tensor) -> PromptRows:
        (context,) = inputs
        eot = self.template.eot
        every = torch.arange(self.n_ctx, device=pairs.device).expand(len(pairs), -1)
        slots = [
            Slot(tuple(range(1, 1 + self.n_ctx)), context, every),
            Slot((eot - 2,), self.attr_vectors, pairs[:, 0]),
            Slot((eot - 1,), self.obj_vectors, pairs[:, 1]),
        ]
        return fill_template(self.template.tokens, self.template.embeddings, slots)

    def _triple_text_features(self, triples: torch.Tensor) -> torch.Tensor:
        if self.triple_template is None:
            self.triple_template = self._aligned_template(SOFT_TRIPLE_TEMPLATE, 3)
        rows = [
            self.attr_vectors[triples[:, 0]],
            self.attr_vectors[triples[:, 1]],
            self.obj_vectors[triples[:, 2]],
        ]
        tokens, embeddings = self.triple_template.with_slots(rows)
        embeddings[:, 1 : 1 + self.n_ctx, :] = self.context.to(embeddings.dtype)
        return self.backbone.encode_text_embeddings(embeddings, tokens).float()

    def trainable_state(self) -> dict[str, Any]:
        """``{"context": (n_ctx, width) tensor}``."""
        if self.backbone is None:
            return {}
        return {"context": self.context.detach().cpu().clone()}

    def apply_trainable_state(self, state: Mapping[str, Any]) -> None:
        if "context" not in state:
            raise BenchError("saved CoOp state has no 'context'; it is not a CoOp artifact")
        saved = torch.as_tensor(state["context"])
        if tuple(saved.shape) != tuple(self.context.shape):
            raise BenchError(
                f"saved context has shape {tuple(saved.shape)} but backbone "
                f"{self.backbone_name()} needs {tuple(self.context.shape)}"
            )
        with torch.no_grad():
            self.context.copy_(saved.to(self.context.device, self.context.dtype))
