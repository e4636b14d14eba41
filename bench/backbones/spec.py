"""Backbone spec strings: what the user passes to ``--backbone``."""

from __future__ import annotations

from dataclasses import dataclass

#: The accepted forms, for error messages.
FORMS_HELP = (
    "use MODEL:PRETRAINED (e.g. ViT-L-14:openai), MODEL:/path/to/weights.pt, "
    "hf-hub:ORG/REPO, local-dir:PATH, tiny-random, toy-clip or timm:MODEL[:/path/weights]"
)


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed ``--backbone`` value.

    Attributes:
        raw: The string as given (stripped).
        source: Where the weights come from: "open_clip" (a model name and a pretrained tag
            from open_clip's registry), "hf-hub", "local-dir", "checkpoint" (a local file),
            "tiny-random", "toy-clip" or "timm".
        model_name: The open_clip (or timm) model name; the repository id for "hf-hub";
            the folder for "local-dir".
        pretrained: The open_clip pretrained tag ("open_clip"; None for a randomly
            initialised model), the file path ("checkpoint"), otherwise None.
    """

    raw: str
    source: str
    model_name: str
    pretrained: str | None
