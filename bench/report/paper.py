"""Published numbers (``results/published.csv``) against the reproduced ones, and their tables."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import bench
from bench.errors import BenchError
from bench.report.aggregate import METRICS
from bench.report.latex import booktabs_table, latex_escape
from bench.report.records import NO_PROTOCOL
from bench.report.render import check_format, markdown_table, new_rich_table
from bench.report.tables import cell_text, world_adjective, world_label

#: The Δ cell and the row mark of a row whose protocol is not the paper's.
NOT_COMPARED = "n/a"
MARK = "†"


def published_path() -> Path:
    """``results/published.csv`` of the repository, or the copy shipped in the wheel."""
    package = Path(bench.__file__).resolve().parent
    candidates = [package.parent / "results" / "published.csv", package / "_data" / "published.csv"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BenchError(
        f"cannot find published.csv (looked in {', '.join(map(str, candidates))}); reinstall the package"
    )


def load_published(path: Path | None = None) -> pd.DataFrame:
    """Published numbers: method, dataset, backbone, setting (cw/ow), split, S, U, HM, AUC, citation."""
    path = path or published_path()
    frame = pd.read_csv(path, dtype={"method": str, "dataset": str, "backbone": str})
    missing = {"method", "dataset", "backbone", "setting", "split", "S", "U", "HM", "AUC"} - set(
        frame
    )
    if missing:
        raise BenchError(f"{path}: missing columns {', '.join(sorted(missing))}; fix the file")
    return frame


def compare_with_paper(
    summary: pd.DataFrame, published: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Reported against reproduced numbers where dataset, method and backbone match the paper's.

    The difference is shown only for rows whose protocol is the paper's (``matches_paper``);
    the others keep their numbers, get no delta (NaN) and a note naming the fields that
    differ (``differs``).

    Returns:
        A frame with one row per summary row that has paper numbers (``world, split, dataset,
        method, label, backbone, n, seeds``, then ``{M}_paper, {M}_mean, {M}_std, {M}_delta``
        for M in S, U, HM, AUC, then ``matches_paper, differs, source, citation``; delta =
        reproduced - reported) and notes saying why the other rows have no comparison.
    """
    published = load_published() if published is None else published
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for _, row in summary.iterrows():
        split_rows = published[published["split"] == row["split"]]
        paper = split_rows[split_rows["setting"] == row["world"]]
        if split_rows.empty:
            note = f"no paper numbers for the {row['split']} split (the paper reports {_names(published['split'])})"
        elif row["dataset"] not in set(paper["dataset"]):
            note = f"no paper numbers for dataset {row['dataset']} (the paper reports {_names(paper['dataset'])})"
        elif row["method"] not in set(paper.loc[paper["dataset"] == row["dataset"], "method"]):
            methods = _names(paper.loc[paper["dataset"] == row["dataset"], "method"])
            note = f"no paper numbers for method {row['method']} on {row['dataset']} (the paper reports {methods})"
        else:
            match = paper[(paper["dataset"] == row["dataset"]) & (paper["method"] == row["method"])]
            hit = match[match["backbone"] == row["backbone"]]
            if hit.empty:
                note = (
                    f"no paper numbers for backbone {row['backbone']}; "
                    f"the paper used {_names(match['backbone'])}"
                )
            else:
                ref = hit.iloc[0]
                out: dict[str, Any] = {
                    k: row[k]
                    for k in (
                        "world",
                        "split",
                        "dataset",
                        "method",
                        "label",
                        "backbone",
                        "n",
                        "seeds",
                    )
                }
                differs = str(row.get("paper_deviations", NO_PROTOCOL))
                for name, _ in METRICS:
                    out[f"{name}_paper"] = float(ref[name])
                    out[f"{name}_mean"] = float(row[f"{name}_mean"])
                    out[f"{name}_std"] = float(row[f"{name}_std"])
                    delta = float(row[f"{name}_mean"]) - float(ref[name])
                    out[f"{name}_delta"] = math.nan if differs else delta
                out["matches_paper"] = not differs
                out["differs"] = differs
                out["source"] = str(ref.get("source", ""))
                out["citation"] = str(ref.get("citation", ""))
                rows.append(out)
                if not differs:
                    continue
                note = (
                    f"{row['label']} on {row['dataset']}: not the paper's protocol, so no "
                    f"difference is shown ({differs})"
                )
        if note not in notes:
            notes.append(note)
    columns = ["world", "split", "dataset", "method", "label", "backbone", "n", "seeds"]
    columns += [f"{name}_{k}" for name, _ in METRICS for k in ("paper", "mean", "std", "delta")]
    columns += ["matches_paper", "differs", "source", "citation"]
    return pd.DataFrame(rows, columns=columns), notes


def _names(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in dict.fromkeys(values))


@dataclass
class _Comparison:
    world: str
    header: list[tuple[str, str]]
    index: list[tuple[str, str]]
    body: list[list[str]]
    caption: str


def _delta_text(ours: float, paper: float, style: str, matches: bool = True) -> str:
    if not matches:
        return NOT_COMPARED
    delta = round(round(ours, 1) - paper, 1) + 0.0  # of the shown values; no "-0.0"
    text = f"{delta:+.1f}"
    return f"${text}$" if style == "latex" else text.replace("-", "−")


def _comparisons(comparison: pd.DataFrame, style: str) -> list[_Comparison]:
    if comparison.empty:
        raise BenchError("nothing to compare with the paper")
    out = []
    for world in dict.fromkeys(comparison["world"]):
        frame = comparison[comparison["world"] == world]
        header = [(name, sub) for name, _ in METRICS for sub in ("Paper", "Ours", "Δ")] + [
            ("n", "")
        ]
        body, index = [], []
        for _, row in frame.iterrows():
            matches = bool(row.get("matches_paper", True))
            line = []
            for name, _ in METRICS:
                line.append(f"{row[f'{name}_paper']:.1f}")
                line.append(cell_text(row, name, None, style))
                line.append(_delta_text(row[f"{name}_mean"], row[f"{name}_paper"], style, matches))
            body.append([*line, str(int(row["n"]))])
            index.append((row["dataset"], row["label"] + ("" if matches else f" {MARK}")))
        first = frame.iloc[0]
        caption = (
            f"{world_adjective(world)} results on the {first['split']} split (%): "
            f"Paper = reported by {_names(frame['source'])}, backbone {_names(frame['backbone'])}; "
            "Ours = this reproduction, mean ± std over n seeds; Δ = Ours − Paper (of the shown values)."
        )
        if any(label != method for label, method in zip(frame["label"], frame["method"])):
            caption += " Rows that differ in setting are given in parentheses and never averaged."
        if not frame["matches_paper"].all():
            caption += (
                f" {MARK} Not the paper's protocol (the fields that differ are listed in the "
                f"notes): no Δ ({NOT_COMPARED})."
            )
        out.append(_Comparison(world, header, index, body, caption))
    return out


def render_comparison(comparison: pd.DataFrame, fmt: str) -> str:
    """Render :func:`compare_with_paper`'s frame as "latex", "markdown" or "csv"."""
    if fmt == "csv":
        return comparison.to_csv(index=False, float_format="%.2f", lineterminator="\n")
    check_format(fmt)
    parts = []
    for table in _comparisons(comparison, fmt):
        if fmt == "latex":
            frame = pd.DataFrame(
                table.body,
                index=pd.MultiIndex.from_tuples(
                    [(latex_escape(d), latex_escape(m)) for d, m in table.index]
                ),
                columns=pd.MultiIndex.from_tuples(
                    [(latex_escape(a), latex_escape(b)) for a, b in table.header]
                ),
            )
            parts.append(
                booktabs_table(
                    frame, table.caption, f"tab:czsl-paper-{table.world}", ["Dataset", "Method"]
                )
            )
        else:
            header = ["Dataset", "Method"] + [f"{a} {b}".strip() for a, b in table.header]
            body = [[d, m, *cells] for (d, m), cells in zip(table.index, table.body)]
            parts.append(f"{markdown_table(header, body, 2)}\n\nTable: {table.caption}\n")
    return "\n".join(parts)


def render_comparison_rich(comparison: pd.DataFrame) -> list[Any]:
    """Rich tables of :func:`compare_with_paper`'s frame, one per world."""
    from rich.markup import escape

    tables = []
    for table in _comparisons(comparison, "rich"):
        rich_table = new_rich_table(
            f"{world_label(table.world).capitalize()}: paper vs reproduced (%)", table.caption
        )
        rich_table.add_column("Dataset", no_wrap=True)
        rich_table.add_column("Method", no_wrap=True)
        previous = None
        for name, sub in table.header:
            group = name if name != previous else ""
            rich_table.add_column(f"{group}\n{sub}".rstrip(), justify="right", no_wrap=True)
            previous = name
        for (dataset, label), cells in zip(table.index, table.body):
            rich_table.add_row(escape(dataset), escape(label), *cells)
        tables.append(rich_table)
    return tables
