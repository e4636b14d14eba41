"""The training augmentation: the official CSP transform order."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from bench.backbones import Backbone
from bench.backbones.build import csp_train_transform

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(57, 83, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _official(size: int) -> transforms.Compose:
    """The official CSP training transform, composed by hand (datasets/composition_dataset)."""
    return transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.RandomPerspective(),
            transforms.RandomRotation(5),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


def _views(transform: transforms.Compose, seeds: range) -> list[torch.Tensor]:
    views = []
    for seed in seeds:
        torch.manual_seed(seed)
        views.append(transform(_image()))
    return views


def test_train_transform_matches_the_official_order(tiny: Backbone) -> None:
    size = int(tiny.preprocess_cfg["size"][0])
    ours = _views(tiny.train_transform, range(8))
    official = _views(_official(size), range(8))
    for mine, theirs in zip(ours, official, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)
    # the seeds draw different views, and augmenting before the resize would differ
    assert not torch.equal(ours[0], ours[1])
    before = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomPerspective(),
            transforms.RandomRotation(5),
            tiny.preprocess,
        ]
    )
    assert any(
        not torch.allclose(a, b) for a, b in zip(_views(before, range(8)), ours, strict=True)
    )


def test_train_transform_of_a_plain_callable_augments_first() -> None:
    def preprocess(image: Image.Image) -> torch.Tensor:
        return transforms.functional.to_tensor(image)

    steps = csp_train_transform(preprocess).transforms
    assert [type(s).__name__ for s in steps[:3]] == [
        "RandomHorizontalFlip",
        "RandomPerspective",
        "RandomRotation",
    ]
    assert steps[3] is preprocess
