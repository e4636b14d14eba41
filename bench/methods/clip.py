"""Zero-shot CLIP: score each pair with the prompt "a photo of {attr} {obj}"."""

from __future__ import annotations

from typing import Any

import torch

from bench.backbones import clean_name
from bench.methods.base import FitContext
from bench.methods.clip_family import ClipFamilyMethod, TriplePrompts
from bench.prefix_text import encode_prompts, token_prompts

#: Prompt of a higher-order triple (the official ``aao`` script's).
TRIPLE_TEMPLATE = "a photo of {attr} {attr2} {obj}"


class ClipZeroShot(TriplePrompts, ClipFamilyMethod):
    """Frozen CLIP with a hand-written prompt per (attribute, object) pair; trains nothing.

    Hyperparameters:
        template: Prompt with ``{attr}`` and ``{obj}`` placeholders (names are cleaned:
            ``FitContext.name_cleaning``: "words" lowercases and turns '.' and '_' into
            spaces; "official" only turns '.' into spaces and lowercases).
            Higher-order triples always use ``TRIPLE_TEMPLATE``.
    """

    name = "clip"
    trains = False

    def _setup(self, ctx: FitContext) -> None:
        template = str(self.hparams.get("template", "a photo of {attr} {obj}"))
        self._template = template
        self._attr_names = [clean_name(a, self.name_cleaning) for a in self.dataset.attrs]
        self._obj_names = [clean_name(o, self.name_cleaning) for o in self.dataset.objs]

    def prompts(self, pairs: torch.Tensor) -> list[str]:
        """The prompt text of each (attr_id, obj_id) pair."""
        return [
            self._template.format(attr=self._attr_names[a], obj=self._obj_names[o])
            for a, o in pairs.tolist()
        ]

    def _text_features(self, pairs: torch.Tensor, train: bool) -> torch.Tensor:
        backbone = self._require_setup()
        prompts = self.prompts(pairs)
        if self.text_encoding == "full":
            return backbone.encode_text(prompts).float()
        tower = backbone.text_tower()
        return encode_prompts(tower, token_prompts(tower, backbone.tokenizer(prompts)))

    def triple_prompts(self, triples: torch.Tensor) -> list[str]:
        """The prompt text of each (attr_id, attr2_id, obj_id) triple."""
        names = self._attr_names
        return [
            TRIPLE_TEMPLATE.format(attr=names[a], attr2=names[b], obj=self._obj_names[o])
            for a, b, o in triples.tolist()
        ]

    def _triple_text_features(self, triples: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_text(self.triple_prompts(triples)).float()

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        """Bind the backbone and dataset; nothing is trained."""
        self.prepare(ctx)
        return {
            "best_epoch": 0,
            "epochs_run": 0,
            "best_val_auc": None,
            "final_loss": None,
            "augment": "none",
        }
