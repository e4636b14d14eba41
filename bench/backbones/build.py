"""Helpers every backbone source builds with: quiet loading, digests, one-line errors."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from bench.io import sha256_file

_file_digests: dict[tuple[str, int, int], str] = {}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence open_clip's root-logger chatter (e.g. 'Model initialized randomly')."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def short_error(exc: BaseException | None, limit: int = 240) -> str:
    """One line of at most ``limit`` characters from an exception (ANSI codes removed)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a weights file, memoised per (path, size, mtime) within the process."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _file_digests:
        _file_digests[key] = sha256_file(real)
    return _file_digests[key]


def state_dict_digest(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every state_dict tensor."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def csp_train_transform(preprocess: Callable[[Any], torch.Tensor]) -> Any:
    """The official CSP training augmentation inside ``preprocess``, in the official order.

    The official code augments the resized, cropped image: Resize(bicubic) -> CenterCrop ->
    RandomHorizontalFlip -> RandomPerspective -> RandomRotation(5) -> ToTensor -> Normalize.
    The three augmentations go just before ``preprocess``'s tensor conversion (a step whose
    class name contains ``ToTensor``); a ``preprocess`` that is not a ``Compose`` with such a
    step gets them before it as a whole.
    """
    from torchvision import transforms

    augmentations = [
        transforms.RandomHorizontalFlip(),
        transforms.RandomPerspective(),
        transforms.RandomRotation(5),
    ]
    steps = list(getattr(preprocess, "transforms", []))
    at = next((i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__), None)
    if at is None:
        return transforms.Compose([*augmentations, preprocess])
    return transforms.Compose([*steps[:at], *augmentations, *steps[at:]])
