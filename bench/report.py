"""Paper-ready outputs: result tables (LaTeX, Markdown, CSV, terminal), paper comparison, figures.

Everything is built from cell results, the JSONs under ``<results-dir>/runs/`` (the source of
truth) or, through :mod:`bench.tracking`, the MLflow child runs. Runs are averaged over seeds
only when everything else about them is equal: backbone (spec and weights), augmentation,
top-k, feasibility mode, word vectors, evaluation protocol, hyperparameters and dataset
fingerprint. Runs that differ get separate rows whose labels name the difference, e.g.
``csp (ViT-B-32:openai)``.

Layout of the summary frame (:func:`aggregate`), one row per (world, dataset, row label):
``world, split, dataset, method, label, n, seeds, S_mean, S_std, U_mean, U_std, HM_mean,
HM_std, AUC_mean, AUC_std`` (in %; std is the sample std, NaN for one seed), then the setting
fields and ``random_weights``; ``row_order`` (after ``label``) is the display order of rows.
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

import bench
from bench.errors import BenchError
from bench.io import atomic_open, sha256_json

#: Table columns: (header, key in a result's metrics block).
METRICS: tuple[tuple[str, str], ...] = (
    ("S", "best_seen"),
    ("U", "best_unseen"),
    ("HM", "best_hm"),
    ("AUC", "auc"),
)
WORLDS = ("cw", "ow")
WORLD_NAMES = {"cw": "closed world", "ow": "open world"}
_WORLD_ADJECTIVES = {"cw": "Closed-world", "ow": "Open-world"}
#: Datasets of the CSP paper, in its column order (other datasets follow alphabetically).
PAPER_DATASETS = ("mit-states", "ut-zappos", "cgqa")
FORMATS = ("latex", "markdown", "csv")
FORMAT_SUFFIXES = {".tex": "latex", ".md": "markdown", ".csv": "csv"}
DEFAULT_UI_HOST = "127.0.0.1"
DEFAULT_UI_PORT = 5000
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# Setting fields, in the order they are tried for row labels. Global fields mean the same on
# every dataset; local ones (hyperparameters, dataset version) legitimately differ per dataset.
_GLOBAL_FIELDS = (
    "backbone",
    "augment",
    "topk",
    "feasibility",
    "word_vectors",
    "protocol",
    "backbone_identifier",
)
_LOCAL_FIELDS = ("hparams_hash", "dataset_fingerprint")
_FIELD_LABELS = {
    "backbone": "{}",
    "augment": "augment {}",
    "topk": "top-{}",
    "feasibility": "feasibility {}",
    "word_vectors": "word vectors {}",
    "protocol": "protocol {}",
    "backbone_identifier": "weights {}",
    "hparams_hash": "hparams {:.8}",
    "dataset_fingerprint": "data {:.8}",
}
_FIELD_NAMES = {
    "backbone": "backbone",
    "augment": "augmentation",
    "topk": "top-k",
    "feasibility": "feasibility mode",
    "word_vectors": "word vectors",
    "protocol": "evaluation protocol",
    "backbone_identifier": "backbone weights",
    "hparams_hash": "hyperparameters (hash)",
    "dataset_fingerprint": "dataset version (fingerprint)",
}


@dataclass(frozen=True, order=True)
class Setting:
    """Everything besides method, dataset and seed that makes two runs comparable."""

    backbone: str
    backbone_identifier: str
    augment: str
    topk: int
    feasibility: str
    word_vectors: str
    protocol: str
    hparams_hash: str
    dataset_fingerprint: str


@dataclass(frozen=True)
class RunRecord:
    """One finished cell: who ran, on what, with which setting, and its metrics.

    Attributes:
        method: Method name.
        dataset: Dataset label.
        seed: Random seed.
        setting: The comparability key (runs are averaged only within one setting).
        metrics: ``{split: {world: block}}`` as in the result JSON (fractions, not %).
        random_weights: The backbone had random weights.
        created_at: ISO timestamp (the latest duplicate wins).
        source: Result path or MLflow run id.
    """

    method: str
    dataset: str
    seed: int
    setting: Setting
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]]
    random_weights: bool = False
    created_at: str = ""
    source: str = ""

    def block(self, split: str, world: str) -> Mapping[str, Any] | None:
        """The metrics block of ``split``/``world``, or None."""
        block = self.metrics.get(split, {}).get(world)
        return block if block else None


# --------------------------------------------------------------------------- loading
def record_from_result(result: Mapping[str, Any], source: str = "") -> RunRecord:
    """Turn a result dict (result JSON, or MLflow run read by bench.tracking) into a record."""
    config = result.get("config", {})
    evaluation = config.get("eval", {})
    cell = result.get("cell", {})
    backbone = str(config.get("backbone", "unknown"))
    setting = Setting(
        backbone=backbone,
        backbone_identifier=str(config.get("backbone_identifier") or backbone),
        augment=str(config.get("augment", "none")),
        topk=int(evaluation.get("topk", 1)),
        feasibility=str(evaluation.get("feasibility", "none")),
        word_vectors=str(evaluation.get("word_vectors", "none")),
        protocol=str(evaluation.get("protocol", "unknown")),
        hparams_hash=sha256_json(config.get("hparams", {}))[:12],
        dataset_fingerprint=str(config.get("dataset_fingerprint", "unknown")),
    )
    return RunRecord(
        method=str(cell.get("method", config.get("method"))),
        dataset=str(cell.get("dataset", config.get("dataset"))),
        seed=int(cell.get("seed", config.get("seed", 0))),
        setting=setting,
        metrics=result.get("metrics", {}),
        random_weights=bool(result.get("backbone_random_weights", False)),
        created_at=str(result.get("created_at", "")),
        source=source,
    )


def _select(
    records: Iterable[RunRecord], datasets: Sequence[str] | None, methods: Sequence[str] | None
) -> list[RunRecord]:
    """Filter records and keep the latest of duplicates (same cell, same setting)."""
    latest: dict[tuple[str, str, int, Setting], RunRecord] = {}
    for record in records:
        if datasets and record.dataset not in datasets:
            continue
        if methods and record.method not in methods:
            continue
        key = (record.dataset, record.method, record.seed, record.setting)
        if key not in latest or record.created_at > latest[key].created_at:
            latest[key] = record
    return sorted(latest.values(), key=lambda r: (r.dataset, r.method, r.setting, r.seed))


def load_records(
    results_dir: Path,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> list[RunRecord]:
    """Finished cells from the result JSONs under ``<results_dir>/runs/<dataset>/<method>/``.

    Incomplete or unreadable files are skipped; of duplicates the newest is kept.
    """
    from bench.runner import load_result

    runs = Path(results_dir) / "runs"
    found = []
    for path in sorted(runs.glob("*/*/*.json")) if runs.is_dir() else []:
        result = load_result(path)
        if result is not None and "cell" in result:
            found.append(record_from_result(result, str(path)))
    return _select(found, datasets, methods)


def load_records_mlflow(
    tracking_uri: str,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    *,
    curves: bool = True,
) -> list[RunRecord]:
    """Finished cells from an MLflow store (child runs of the ``czsl/<dataset>`` experiments)."""
    from bench.tracking import read_cell_results

    results = read_cell_results(tracking_uri, datasets, curves=curves)
    return _select(
        (record_from_result(r, f"mlflow run {r.get('mlflow_run_id')}") for r in results),
        datasets,
        methods,
    )


# --------------------------------------------------------------------------- aggregation
def _order_key(value: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), value)


def _distinguishing(settings: Sequence[Setting], candidates: Sequence[str]) -> list[str]:
    """The fields (greedily, in order) needed to tell ``settings`` apart."""
    chosen: list[str] = []
    for name in candidates:
        before = {tuple(getattr(s, c) for c in chosen) for s in settings}
        after = {tuple(getattr(s, c) for c in [*chosen, name]) for s in settings}
        if len(after) > len(before):
            chosen.append(name)
    return chosen


def row_labels(
    groups: Iterable[tuple[str, str, Setting]],
) -> tuple[dict[tuple[str, str, Setting], str], list[str]]:
    """Row labels for (dataset, method, setting) groups and the fields that tell rows apart.

    A global field (backbone, augmentation, ...) that differs anywhere is named in every label,
    so rows line up across datasets; hyperparameters and dataset fingerprints are named only
    where one dataset and method have several of them.

    Returns:
        ``{group: label}`` (e.g. ``csp (ViT-B-32:openai)``) and the differing field names.
    """
    groups = sorted(set(groups))
    global_fields = _distinguishing(sorted({s for _, _, s in groups}), _GLOBAL_FIELDS)
    by_key: dict[tuple[Any, ...], list[Setting]] = {}
    for dataset, method, setting in groups:
        key = (dataset, method, *(getattr(setting, f) for f in global_fields))
        by_key.setdefault(key, []).append(setting)
    differing = list(global_fields)
    labels: dict[tuple[str, str, Setting], str] = {}
    for (dataset, method, *_), settings in by_key.items():
        local = _distinguishing(settings, _LOCAL_FIELDS) if len(settings) > 1 else []
        differing += [f for f in local if f not in differing]
        for setting in settings:
            parts = [_FIELD_LABELS[f].format(getattr(setting, f)) for f in [*global_fields, *local]]
            labels[(dataset, method, setting)] = (
                f"{method} ({', '.join(parts)})" if parts else method
            )
    return labels, differing


def aggregate(
    records: Sequence[RunRecord],
    split: str = "test",
    worlds: Sequence[str] = WORLDS,
    dataset_order: Sequence[str] | None = None,
    method_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean, sample std and count over seeds per (world, dataset, method, setting), in %.

    Args:
        records: Finished cells (see :func:`load_records`).
        split: "test" or "val".
        worlds: Any of "cw", "ow".
        dataset_order: Column order of datasets (default: the paper's, then alphabetical).
        method_order: Row order of methods (default: alphabetical).

    Returns:
        The summary frame described in the module docstring, sorted by world, dataset and row.
    """
    dataset_order = tuple(dataset_order or PAPER_DATASETS)
    method_order = tuple(method_order or ())
    groups: dict[tuple[str, str, Setting], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.dataset, record.method, record.setting), []).append(record)
    labels, _ = row_labels(groups)
    rows: list[dict[str, Any]] = []
    for world in worlds:
        for (dataset, method, setting), members in groups.items():
            blocks = sorted(
                ((r.seed, r.block(split, world)) for r in members if r.block(split, world)),
                key=lambda pair: pair[0],
            )
            if not blocks:
                continue
            row: dict[str, Any] = {
                "world": world,
                "split": split,
                "dataset": dataset,
                "method": method,
                "label": labels[(dataset, method, setting)],
                "n": len(blocks),
                "seeds": ",".join(str(seed) for seed, _ in blocks),
            }
            for name, key in METRICS:
                values = [100.0 * float(block[key]) for _, block in blocks]
                row[f"{name}_mean"] = statistics.fmean(values)
                row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
            row.update(asdict(setting))
            row["random_weights"] = any(r.random_weights for r in members)
            rows.append(row)
    columns = ["world", "split", "dataset", "method", "label", "n", "seeds"]
    columns += [f"{name}_{stat}" for name, _ in METRICS for stat in ("mean", "std")]
    columns += [f.name for f in fields(Setting)] + ["random_weights"]
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        frame.insert(5, "row_order", pd.Series(dtype=int))
        return frame
    order = sorted(
        range(len(frame)),
        key=lambda i: (
            worlds.index(frame.at[i, "world"]),
            _order_key(frame.at[i, "dataset"], dataset_order),
            _order_key(frame.at[i, "method"], method_order),
            frame.at[i, "label"],
        ),
    )
    frame = frame.iloc[order].reset_index(drop=True)
    label_order = sorted(
        set(zip(frame["method"], frame["label"])),
        key=lambda ml: (_order_key(ml[0], method_order), ml[1]),
    )
    rank = {label: i for i, (_, label) in enumerate(label_order)}
    frame.insert(5, "row_order", [rank[label] for label in frame["label"]])
    return frame


# --------------------------------------------------------------------------- table model
@dataclass
class _Table:
    """One world's table, format-independent."""

    world: str
    split: str
    datasets: list[str]
    labels: list[str]
    cells: dict[tuple[str, str], Mapping[str, Any]]
    best: dict[tuple[str, str], float]
    show_n: bool
    caption: str


def _settings_of(frame: pd.DataFrame) -> list[tuple[str, str, Setting]]:
    names = [f.name for f in fields(Setting)]
    return [
        (row["dataset"], row["method"], Setting(**{n: row[n] for n in names}))
        for _, row in frame.iterrows()
    ]


def _uniform(frame: pd.DataFrame, column: str) -> Any:
    values = list(dict.fromkeys(frame[column]))
    return values[0] if len(values) == 1 else None


def _seeds_sentence(frame: pd.DataFrame, show_n: bool) -> str:
    if show_n:
        return "Mean ± std over n seeds (column n; no std for one seed)."
    n = int(frame["n"].iloc[0])
    seeds = _uniform(frame, "seeds")
    if n == 1:
        return (
            f"One seed ({seeds}), so no std." if seeds is not None else "One seed each, so no std."
        )
    listed = f" ({seeds.replace(',', ', ')})" if seeds is not None else ""
    return f"Mean ± std over {n} seeds{listed}."


def _settings_sentence(frame: pd.DataFrame, world: str, differing: Sequence[str]) -> str:
    parts = []
    backbone = _uniform(frame, "backbone")
    if backbone is not None and "backbone" not in differing:
        parts.append(f"backbone {backbone}")
    augment = _uniform(frame, "augment")
    if augment is not None and "augment" not in differing:
        parts.append(f"augmentation {augment}")
    topk = _uniform(frame, "topk")
    if topk is not None and "topk" not in differing:
        parts.append(f"top-{topk} accuracy")
    feasibility = _uniform(frame, "feasibility")
    if world == "ow" and feasibility is not None and "feasibility" not in differing:
        vectors = _uniform(frame, "word_vectors")
        if feasibility == "none":
            parts.append("no feasibility filter")
        elif vectors is not None:
            parts.append(f"feasibility filter {feasibility} (word vectors {vectors})")
        else:
            parts.append(f"feasibility filter {feasibility}")
    return (parts[0][0].upper() + "; ".join(parts)[1:] + ".") if parts else ""


def _rows_sentence(frame: pd.DataFrame, differing: Sequence[str]) -> str:
    if differing:
        names = ", ".join(_FIELD_NAMES[f] for f in differing)
        return (
            f"Rows differ in method and {names} (given in parentheses); "
            "runs with different settings are never averaged."
        )
    return "Rows differ only in the method." if frame["method"].nunique() > 1 else ""


def _warning_sentence(frame: pd.DataFrame) -> str:
    random = sorted(set(frame.loc[frame["random_weights"].astype(bool), "backbone"]))
    if not random:
        return ""
    return (
        f"WARNING: backbone {', '.join(random)} has random weights; "
        "its numbers say nothing about the methods."
    )


def _table(summary: pd.DataFrame, world: str) -> _Table:
    frame = summary[summary["world"] == world]
    if frame.empty:
        raise BenchError(f"no {WORLD_NAMES.get(world, world)} results to report")
    split = str(frame["split"].iloc[0])
    datasets = list(dict.fromkeys(frame["dataset"]))
    labels = list(dict.fromkeys(frame.sort_values("row_order", kind="stable")["label"]))
    cells = {(row["label"], row["dataset"]): row for _, row in frame.iterrows()}
    best: dict[tuple[str, str], float] = {}
    for dataset in datasets:
        rows = frame[frame["dataset"] == dataset]
        for name, _ in METRICS:
            shown = [round(v, 1) for v in rows[f"{name}_mean"]]
            if len(set(shown)) > 1:  # a tie of all rows marks nothing
                best[(dataset, name)] = max(shown)
    show_n = frame["n"].nunique() > 1
    _, differing = row_labels(_settings_of(frame))
    sentences = [
        f"{_WORLD_ADJECTIVES[world]} results on the {split} split (%): "
        "S best seen accuracy, U best unseen accuracy, HM best harmonic mean, "
        "AUC area under the seen–unseen curve.",
        _seeds_sentence(frame, show_n),
        _settings_sentence(frame, world, differing),
        _rows_sentence(frame, differing),
        "Best value per column in bold." if best else "",
        _warning_sentence(frame),
    ]
    caption = " ".join(s for s in sentences if s)
    return _Table(world, split, datasets, labels, cells, best, show_n, caption)


def _tables(summary: pd.DataFrame) -> list[_Table]:
    if summary.empty:
        raise BenchError("no results to report")
    return [_table(summary, world) for world in dict.fromkeys(summary["world"])]


def _cell_text(row: Mapping[str, Any] | None, name: str, best: float | None, style: str) -> str:
    if row is None:
        return {"latex": "--", "markdown": "–", "rich": "–"}[style]
    mean = f"{row[f'{name}_mean']:.1f}"
    if best is not None and round(row[f"{name}_mean"], 1) == best:
        mean = {"latex": "\\textbf{%s}", "markdown": "**%s**", "rich": "[bold]%s[/bold]"}[
            style
        ] % mean
    std = row[f"{name}_std"]
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return mean
    pm = "$\\pm$" if style == "latex" else "±"
    return f"{mean} {pm} {std:.1f}"


def _columns(table: _Table) -> list[tuple[str, str]]:
    metrics = [name for name, _ in METRICS] + (["n"] if table.show_n else [])
    return [(dataset, metric) for dataset in table.datasets for metric in metrics]


def _table_cells(table: _Table, style: str) -> list[list[str]]:
    body = []
    for label in table.labels:
        line = []
        for dataset, metric in _columns(table):
            row = table.cells.get((label, dataset))
            if metric == "n":
                line.append(
                    str(int(row["n"])) if row is not None else _cell_text(None, "", None, style)
                )
            else:
                line.append(_cell_text(row, metric, table.best.get((dataset, metric)), style))
        body.append(line)
    return body


# --------------------------------------------------------------------------- LaTeX
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "–": "--",
    "−": "$-$",
    "Δ": r"$\Delta$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (and turn ±, –, −, Δ into their LaTeX forms)."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in str(text))


def _split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.rstrip().removesuffix("\\\\").split("&")]


def _span(cell: str) -> int:
    if cell.startswith("\\multicolumn{"):
        return int(cell[len("\\multicolumn{") :].split("}", 1)[0])
    return 1


def _polish_latex(latex: str, row_headers: Sequence[str]) -> str:
    """Booktabs header polish: multirow row headers, ``\\cmidrule`` under grouped columns.

    Styler writes two header rows (groups, then metrics); the row-header cells and the
    single-column groups (such as ``n``) become ``\\multirow{2}`` cells, and every group
    spanning several columns gets a ``\\cmidrule(lr)``.
    """
    lines = latex.splitlines()
    top = lines.index("\\toprule")
    first, second = _split_row(lines[top + 1]), _split_row(lines[top + 2])
    column, rules, new_first, new_second = 1, [], [], []
    i2 = 0
    for index, cell in enumerate(first):
        span = _span(cell)
        if index < len(row_headers):
            new_first.append(f"\\multirow[c]{{2}}{{*}}{{{row_headers[index]}}}")
            new_second.append("")
        elif span == 1 and not second[i2]:
            new_first.append(f"\\multirow[c]{{2}}{{*}}{{{cell}}}" if cell else "")
            new_second.append("")
        else:
            new_first.append(cell)
            new_second.extend(second[i2 : i2 + span])
            if span > 1:
                rules.append(f"\\cmidrule(lr){{{column}-{column + span - 1}}}")
        column += span
        i2 += span
    if len(row_headers) > 1:  # a little space between the groups of the first index level
        start, end = lines.index("\\midrule") + 1, lines.index("\\bottomrule")
        for index in range(end - 1, start, -1):
            if not lines[index].startswith(" &"):
                lines.insert(index, "\\addlinespace")
    lines[top + 1] = " & ".join(new_first) + " \\\\"
    lines[top + 2] = " & ".join(new_second) + " \\\\"
    if rules:
        lines.insert(top + 2, " ".join(rules))
    return "\n".join(lines) + "\n"


def _latex_table(table: _Table) -> str:
    columns = pd.MultiIndex.from_tuples(
        [(latex_escape(d), m) for d, m in _columns(table)], names=[None, None]
    )
    frame = pd.DataFrame(
        _table_cells(table, "latex"),
        index=pd.Index([latex_escape(label) for label in table.labels]),
        columns=columns,
    )
    latex = frame.style.to_latex(
        hrules=True,
        multicol_align="c",
        multirow_align="c",
        caption=latex_escape(table.caption),
        label=f"tab:czsl-{table.split}-{table.world}",
        position_float="centering",
        column_format="l" + "r" * len(columns),
        environment="table",
    )
    return _polish_latex(latex, ["Method"])


def render_latex(summary: pd.DataFrame) -> str:
    """One booktabs ``table`` per world (``\\usepackage{booktabs,multirow}``)."""
    return "\n".join(_latex_table(table) for table in _tables(summary))


# --------------------------------------------------------------------------- Markdown, CSV, rich
def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]], left: int) -> str:
    align = [":---"] * left + ["---:"] * (len(header) - left)
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def render_markdown(summary: pd.DataFrame) -> str:
    """One pipe table per world, each followed by a pandoc-style ``Table:`` caption."""
    parts = []
    for table in _tables(summary):
        header = ["Method"] + [f"{d} {m}" for d, m in _columns(table)]
        body = [
            [label, *cells] for label, cells in zip(table.labels, _table_cells(table, "markdown"))
        ]
        parts.append(f"{_markdown_table(header, body, 1)}\n\nTable: {table.caption}\n")
    return "\n".join(parts)


def render_csv(summary: pd.DataFrame) -> str:
    """The summary frame as CSV (percentages with two decimals; empty std for one seed)."""
    return summary.drop(columns=["row_order"], errors="ignore").to_csv(
        index=False, float_format="%.2f", lineterminator="\n"
    )


def render_rich(summary: pd.DataFrame) -> list[Any]:
    """Rich tables for the terminal, one per world."""
    from rich.markup import escape
    from rich.table import Table

    tables = []
    for table in _tables(summary):
        rich_table = Table(
            title=f"{WORLD_NAMES[table.world].capitalize()}, {table.split} split (%)",
            caption=escape(table.caption),
            caption_justify="left",
        )
        rich_table.add_column("Method", no_wrap=True)
        previous = None
        for dataset, metric in _columns(table):
            group = escape(dataset) if dataset != previous else ""
            rich_table.add_column(f"{group}\n{metric}", justify="right", no_wrap=True)
            previous = dataset
        for label, cells in zip(table.labels, _table_cells(table, "rich")):
            rich_table.add_row(escape(label), *cells)
        tables.append(rich_table)
    return tables


def render(summary: pd.DataFrame, fmt: str) -> str:
    """Render the summary as "latex", "markdown" or "csv"."""
    renderers = {"latex": render_latex, "markdown": render_markdown, "csv": render_csv}
    if fmt not in renderers:
        raise BenchError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    return renderers[fmt](summary)


# --------------------------------------------------------------------------- published numbers
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

    Returns:
        A frame with one row per summary row that has paper numbers (``world, split, dataset,
        method, label, backbone, n, seeds``, then ``{M}_paper, {M}_mean, {M}_std, {M}_delta``
        for M in S, U, HM, AUC, then ``source, citation``; delta = reproduced - reported)
        and notes saying why the other rows have no comparison.
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
                for name, _ in METRICS:
                    out[f"{name}_paper"] = float(ref[name])
                    out[f"{name}_mean"] = float(row[f"{name}_mean"])
                    out[f"{name}_std"] = float(row[f"{name}_std"])
                    out[f"{name}_delta"] = float(row[f"{name}_mean"]) - float(ref[name])
                out["source"] = str(ref.get("source", ""))
                out["citation"] = str(ref.get("citation", ""))
                rows.append(out)
                continue
        if note not in notes:
            notes.append(note)
    columns = ["world", "split", "dataset", "method", "label", "backbone", "n", "seeds"]
    columns += [f"{name}_{k}" for name, _ in METRICS for k in ("paper", "mean", "std", "delta")]
    return pd.DataFrame(rows, columns=[*columns, "source", "citation"]), notes


def _names(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in dict.fromkeys(values))


@dataclass
class _Comparison:
    world: str
    header: list[tuple[str, str]]
    index: list[tuple[str, str]]
    body: list[list[str]]
    caption: str


def _delta_text(ours: float, paper: float, style: str) -> str:
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
            line = []
            for name, _ in METRICS:
                line.append(f"{row[f'{name}_paper']:.1f}")
                line.append(_cell_text(row, name, None, style))
                line.append(_delta_text(row[f"{name}_mean"], row[f"{name}_paper"], style))
            body.append([*line, str(int(row["n"]))])
            index.append((row["dataset"], row["label"]))
        first = frame.iloc[0]
        caption = (
            f"{_WORLD_ADJECTIVES[world]} results on the {first['split']} split (%): "
            f"Paper = reported by {_names(frame['source'])}, backbone {_names(frame['backbone'])}; "
            "Ours = this reproduction, mean ± std over n seeds; Δ = Ours − Paper (of the shown values)."
        )
        if any(label != method for label, method in zip(frame["label"], frame["method"])):
            caption += " Rows that differ in setting are given in parentheses and never averaged."
        out.append(_Comparison(world, header, index, body, caption))
    return out


def render_comparison(comparison: pd.DataFrame, fmt: str) -> str:
    """Render :func:`compare_with_paper`'s frame as "latex", "markdown" or "csv"."""
    if fmt == "csv":
        return comparison.to_csv(index=False, float_format="%.2f", lineterminator="\n")
    if fmt not in FORMATS:
        raise BenchError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
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
            latex = frame.style.to_latex(
                hrules=True,
                multicol_align="c",
                multirow_align="c",
                caption=latex_escape(table.caption),
                label=f"tab:czsl-paper-{table.world}",
                position_float="centering",
                column_format="ll" + "r" * len(table.header),
                environment="table",
            )
            parts.append(_polish_latex(latex, ["Dataset", "Method"]))
        else:
            header = ["Dataset", "Method"] + [f"{a} {b}".strip() for a, b in table.header]
            body = [[d, m, *cells] for (d, m), cells in zip(table.index, table.body)]
            parts.append(f"{_markdown_table(header, body, 2)}\n\nTable: {table.caption}\n")
    return "\n".join(parts)


def render_comparison_rich(comparison: pd.DataFrame) -> list[Any]:
    """Rich tables of :func:`compare_with_paper`'s frame, one per world."""
    from rich.markup import escape
    from rich.table import Table

    tables = []
    for table in _comparisons(comparison, "rich"):
        rich_table = Table(
            title=f"{WORLD_NAMES[table.world].capitalize()}: paper vs reproduced (%)",
            caption=escape(table.caption),
            caption_justify="left",
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


# --------------------------------------------------------------------------- figures
def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _save(figure: Any, path: Path) -> Path:
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format=path.suffix.lstrip("."))
    return path


def _auc_bars(frame: pd.DataFrame, dataset: str, stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(frame.sort_values("row_order", kind="stable")["label"]))
    worlds = list(dict.fromkeys(frame["world"]))
    width = 0.8 / len(worlds)
    figure, axis = plt.subplots(figsize=(max(4.5, 1.1 * len(labels) + 1.5), 3.6), dpi=120)
    for offset, world in enumerate(worlds):
        rows = frame[frame["world"] == world].set_index("label")
        xs = [i + (offset - (len(worlds) - 1) / 2) * width for i in range(len(labels))]
        means = [rows.at[label, "AUC_mean"] if label in rows.index else 0.0 for label in labels]
        stds = [rows.at[label, "AUC_std"] if label in rows.index else 0.0 for label in labels]
        stds = [0.0 if math.isnan(s) else s for s in stds]
        bars = axis.bar(xs, means, width, yerr=stds, capsize=3, label=WORLD_NAMES[world])
        counts = [
            f"n={int(rows.at[label, 'n'])}" if label in rows.index else "" for label in labels
        ]
        axis.bar_label(bars, labels=counts, fontsize=6, padding=2)
    axis.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=7)
    axis.set_ylabel("AUC (%)")
    split = frame["split"].iloc[0]
    warning = " [RANDOM backbone weights]" if frame["random_weights"].astype(bool).any() else ""
    axis.set_title(f"{dataset}: {split} AUC, mean ± std over seeds{warning}", fontsize=9)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    paths = [_save(figure, stem.with_suffix(suffix)) for suffix in (".png", ".pdf")]
    plt.close(figure)
    return paths


def write_figures(
    records: Sequence[RunRecord],
    out_dir: Path,
    split: str = "test",
    worlds: Sequence[str] = WORLDS,
    dataset_order: Sequence[str] | None = None,
    method_order: Sequence[str] | None = None,
) -> dict[str, list[Path]]:
    """Seen–unseen curves and AUC bars per dataset, as PNG and PDF under ``out_dir``.

    ``curves-<dataset>-<world>.{png,pdf}``: the calibration curve (whose area is the AUC) of
    every row, from seed 0 or else the row's first seed (named in the legend).
    ``auc-<dataset>.{png,pdf}``: mean AUC per row and world, error bars = sample std over seeds.

    Returns:
        ``{dataset: [files]}``.
    """
    from bench.plots import save_curves

    summary = aggregate(records, split, worlds, dataset_order, method_order)
    if summary.empty:
        raise BenchError(f"no {split} results to plot")
    labels, _ = row_labels({(r.dataset, r.method, r.setting) for r in records})
    written: dict[str, list[Path]] = {}
    out_dir = Path(out_dir)
    for dataset in dict.fromkeys(summary["dataset"]):
        files: list[Path] = []
        frame = summary[summary["dataset"] == dataset]
        order = {
            label: i
            for i, label in enumerate(frame.sort_values("row_order", kind="stable")["label"])
        }
        for world in dict.fromkeys(frame["world"]):
            firsts: dict[str, RunRecord] = {}
            for record in sorted(records, key=lambda r: (r.seed != 0, r.seed)):
                label = labels[(record.dataset, record.method, record.setting)]
                block = record.block(split, world) if record.dataset == dataset else None
                if block and block.get("seen_curve") and label not in firsts:
                    firsts[label] = record
            if not firsts:
                continue
            curves = {
                f"{label} (seed {firsts[label].seed})": firsts[label].block(split, world)
                for label in sorted(firsts, key=lambda k: order.get(k, len(order)))
            }
            seeds = {r.seed for r in firsts.values()}
            which = f"seed {seeds.pop()}" if len(seeds) == 1 else "first seed of each row"
            title = f"{dataset}: {split}, {WORLD_NAMES[world]} ({which})"
            stem = out_dir / f"curves-{_slug(dataset)}-{world}"
            for suffix in (".png", ".pdf"):
                files.append(save_curves(curves, stem.with_suffix(suffix), title))  # type: ignore[arg-type]
        files += _auc_bars(frame, dataset, out_dir / f"auc-{_slug(dataset)}")
        written[dataset] = files
    return written


# --------------------------------------------------------------------------- MLflow UI
def ui_url(host: str, port: int) -> str:
    """The URL the UI serves on (IPv6 hosts in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ui_warning(host: str | None) -> str | None:
    """A warning when ``--host`` was given and is not a loopback address, else None."""
    if host is None or host in _LOOPBACK:
        return None
    return (
        f"the MLflow UI will listen on {host}, reachable from other machines, and it has no "
        "authentication: anyone who can reach it can read and change every run"
    )


def ui_command(
    tracking_uri: str,
    host: str | None = None,
    port: int = DEFAULT_UI_PORT,
    artifacts_destination: Path | None = None,
) -> list[str]:
    """The ``mlflow ui`` command line for the harness's store (bound to 127.0.0.1 by default)."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host or DEFAULT_UI_HOST,
        "--port",
        str(port),
    ]
    if artifacts_destination is not None:
        command += ["--artifacts-destination", str(Path(artifacts_destination).resolve())]
    return command


def serve_ui(command: Sequence[str], grace_s: float = 10.0) -> int:
    """Run the UI in the foreground until it exits or Ctrl-C; return its exit status.

    The UI runs in its own process group (``mlflow ui`` starts worker processes), which is
    stopped as a whole on the way out: SIGTERM, then SIGKILL after ``grace_s`` seconds.
    """
    process = subprocess.Popen(list(command), start_new_session=os.name == "posix")
    try:
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_group(process, grace_s)


def _stop_group(process: subprocess.Popen[Any], grace_s: float) -> None:
    if os.name != "posix":
        if process.poll() is None:
            process.terminate()
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            return  # nothing left in the group
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            # the leader is gone; give stragglers in its group the same grace, then SIGKILL
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and _group_alive(process.pid):
                time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
