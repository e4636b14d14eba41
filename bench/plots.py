"""Plotting primitives shared by the runner (per-cell curves) and bench.report.figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.io import atomic_open


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, paths: Sequence[Path]) -> list[Path]:
    """Write ``figure`` atomically to each path (its suffix, .png or .pdf, picks the format)."""
    for path in paths:
        with atomic_open(path, "wb") as handle:
            figure.savefig(handle, format=path.suffix.lstrip(".") or "png")
    pyplot().close(figure)
    return list(paths)


def save_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: Path,
    title: str,
) -> Path:
    """Plot seen (y) against unseen (x) accuracy for each labelled curve and save the figure.

    Args:
        curves: label -> {"seen_curve": [...], "unseen_curve": [...], "auc": float}.
        path: Output file; the suffix (.png or .pdf) picks the format.
        title: Figure title.
    """
    figure, axis = pyplot().subplots(figsize=(4.5, 4.0), dpi=120)
    for label, curve in curves.items():
        auc = curve.get("auc")
        name = f"{label} (AUC {100 * auc:.1f})" if auc is not None else label
        axis.plot(
            [100 * u for u in curve["unseen_curve"]],
            [100 * s for s in curve["seen_curve"]],
            marker=".",
            label=name,
        )
    axis.set_xlabel("unseen accuracy (%)")
    axis.set_ylabel("seen accuracy (%)")
    axis.set_xlim(0, 100)
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, [path])[0]
