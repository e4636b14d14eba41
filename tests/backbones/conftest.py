"""The tiny randomly initialised CLIP that the backbone tests share."""

from __future__ import annotations

import pytest

from bench.backbones import Backbone, load_backbone


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone("tiny-random", device="cpu")
