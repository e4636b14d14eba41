"""bench.report.latex: golden tables, booktabs structure, escaping, pdflatex.

All results are TEST FIXTURES (see report_fixtures.py): hand-made numbers, never real runs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from report_fixtures import (
    check_golden,
    make_result,
    write_result,
)

from bench import report


def test_latex_golden(grid: Path) -> None:
    latex = report.render_latex(report.aggregate(report.load_records(grid)))
    check_golden("table.tex", latex)


def test_latex_structure(grid: Path) -> None:
    latex = report.render_latex(report.aggregate(report.load_records(grid)))
    assert latex.count("\\begin{table}") == 2 and latex.count("\\end{table}") == 2
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert latex.count(rule) == 2
    assert (
        "\\multirow[c]{2}{*}{Method} & \\multicolumn{4}{c}{mit-states} & \\multicolumn{4}{c}{ut-zappos} \\\\"
        in latex
    )
    assert "\\cmidrule(lr){2-5} \\cmidrule(lr){6-9}" in latex
    assert "\\begin{tabular}{lrrrrrrrr}" in latex
    assert "\\label{tab:czsl-test-cw}" in latex and "\\label{tab:czsl-test-ow}" in latex
    assert "csp & \\textbf{46.9} $\\pm$ 0.4 & \\textbf{49.5} $\\pm$ 0.4" in latex
    caption = next(line for line in latex.splitlines() if line.startswith("\\caption{Closed-world"))
    for part in (
        "test split",
        "Mean $\\pm$ std over 3 seeds (0, 1, 2)",
        "Backbone ViT-L-14:openai",
        "augmentation none",
        "Rows differ only in the method",
        "Best value per column in bold",
    ):
        assert part in caption
    assert "no feasibility filter" in latex  # the open-world caption


def test_latex_escapes_labels(tmp_path: Path) -> None:
    write_result(
        tmp_path,
        make_result("my_method", "my_data", 0, {"cw": (1, 1, 1, 1)}, backbone="local-dir:/x/y_z"),
    )
    latex = report.render_latex(report.aggregate(report.load_records(tmp_path)))
    assert "my\\_method" in latex and "my\\_data" in latex and "y\\_z" in latex
    assert (
        report.latex_escape("50% & $x_1$ ± ~") == "50\\% \\& \\$x\\_1\\$ $\\pm$ \\textasciitilde{}"
    )


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_compiles(grid: Path, tmp_path: Path) -> None:
    for seed in (0, 1):  # a second backbone: multirow-free labels with parentheses and colons
        write_result(
            grid,
            make_result(
                "csp", "mit-states", seed, {"cw": (1, 2, 3, 4)}, backbone="ViT-B-32:openai"
            ),
        )
    summary = report.aggregate(report.load_records(grid))
    comparison, _ = report.compare_with_paper(summary)
    body = report.render_latex(summary) + "\n" + report.render_comparison(comparison, "latex")
    document = (
        "\\documentclass{article}\n\\usepackage[margin=1cm,landscape]{geometry}\n"
        "\\usepackage{booktabs,multirow}\n\\begin{document}\n" + body + "\\end{document}\n"
    )
    (tmp_path / "doc.tex").write_text(document)
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0
