"""Method discovery: built-in methods found by scanning the package, plugins by entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from bench.cards import load_card
from bench.errors import BenchError
from bench.methods import Method, get_method_class, method_names
from bench.methods.csp import CSP

BUILTIN = ["clip", "coop", "csp", "dfsp", "troika", "visprod", "compcos", "cge", "le+", "aop"]
REPO = Path(__file__).resolve().parents[2]


def test_builtin_methods_in_card_order_with_complete_cards() -> None:
    assert method_names()[: len(BUILTIN)] == BUILTIN
    for order, name in enumerate(BUILTIN, start=1):
        cls = get_method_class(name)
        assert issubclass(cls, Method) and cls.name == name
        card = load_card("methods", name)
        assert card["name"] == name and card["order"] == order
        assert card["trains"] is cls.trains
        for key in ("title", "citation", "description"):
            assert isinstance(card[key], str) and card[key].strip(), (name, key)
        assert card["paper_url"].startswith("https://"), name
        for table in ("default", "mit-states", "ut-zappos", "cgqa", "synthetic"):
            assert isinstance(card["hparams"][table], dict), (name, table)
        if cls.trains:
            assert {"epochs", "lr", "batch_size"} <= set(card["hparams"]["default"]), name
    assert get_method_class("csp") is CSP  # third-party methods subclass it under this name


def test_unknown_method_is_one_line() -> None:
    with pytest.raises(BenchError, match=r"unknown method 'nope'; known: clip, coop, csp") as info:
        get_method_class("nope")
    assert "\n" not in str(info.value)


def test_config_extras_record_the_word_vectors_choice() -> None:
    kwargs = {"dataset": None, "backbone": None}
    for name in ("clip", "csp", "visprod"):
        hparams = load_card("methods", name)["hparams"]["default"]
        assert get_method_class(name).config_extras(hparams, word_vectors_spec="x", **kwargs) == {}
    compcos = get_method_class("compcos")
    assert compcos.config_extras(
        {"word_vectors": "backbone"}, word_vectors_spec="glove50", **kwargs
    ) == {"word_vectors": {"spec": "backbone", "source": "hparam word_vectors"}}
    assert compcos.config_extras(
        {"word_vectors": "auto"}, word_vectors_spec="glove50", **kwargs
    ) == {"word_vectors": {"spec": "glove50", "source": "run --word-vectors"}}


# ----------------------------------------------------------------------------- broken plugins


def _fake_distribution(root: Path, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A distribution on ``root`` (to put on sys.path) with method entry points and modules."""
    info = root / "broken_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugins\nVersion: 0.1\n")
    lines = [f"{name} = {value}" for name, value in entry_points.items()]
    (info / "entry_points.txt").write_text("[czsl_bench.methods]\n" + "\n".join(lines) + "\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


def test_broken_plugins_fail_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(
        tmp_path,
        {
            "bad-import": "bench_test_missing_module:Method",
            "raises-on-import": "bench_test_raising:Method",
            "not-a-method": "bench_test_things:Thing",
            "no-card": "bench_test_things:NoCard",
        },
        {
            "bench_test_raising": "raise RuntimeError('plugin bug\\nsecond line')\n",
            "bench_test_things": """
                from bench.methods.csp import CSP

                class Thing:
                    pass

                class NoCard(CSP):
                    pass
            """,
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = {
        "bad-import": r"method plugin 'bad-import' \(bench_test_missing_module:Method\) "
        r"failed to import: ModuleNotFoundError",
        "raises-on-import": r"failed to import: RuntimeError: plugin bug second line",
        "not-a-method": r"bench_test_things:Thing\) is not a subclass of bench.methods.Method",
        "no-card": r"ships no card: expected .*no-card\.toml",
    }
    for name, message in cases.items():
        with pytest.raises(BenchError, match=message) as info:
            get_method_class(name)
        assert "\n" not in str(info.value), name
    with pytest.raises(BenchError, match="method plugin '[a-z-]+' .* failed to import"):
        method_names()  # listing every method needs every plugin


def test_plugin_named_like_a_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(
        tmp_path,
        {"csp": "bench_test_clash:MyCSP"},
        {"bench_test_clash": "from bench.methods.csp import CSP as MyCSP\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_method_class("csp") is CSP  # the built-in wins for its own name
    with pytest.raises(BenchError, match=r"'csp' \(bench_test_clash:MyCSP\) has the name of a"):
        method_names()


# ----------------------------------------------------------------------------- a real plugin

PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "bench-test-csp-plugin"
version = "0.1"

[project.entry-points."czsl_bench.methods"]
my-csp = "my_csp_plugin.method:MyCSP"

[tool.setuptools]
packages = ["my_csp_plugin"]
"""

PLUGIN_MODULE = '''
"""CSP with the prompt "an image of x x": a method from another package."""

from bench.methods.csp import CSP
from bench.methods.clip_family import PromptTemplate


class MyCSP(CSP):
    def _setup(self, ctx):
        super()._setup(ctx)
        self.template = PromptTemplate.build(self.backbone, "an image of x x", 0)
'''

PLUGIN_CARD = """
name = "my-csp"
title = "CSP with another template (plugin test)"
citation = "None."
paper_url = "https://example.org/"
trains = true
description = "A plugin subclassing bench.methods.csp.CSP."

[hparams.default]
epochs = 1
lr = 2e-3
attr_dropout = 0.1
weight_decay = 0.0
batch_size = 32
gradient_accumulation_steps = 1
context_length = 0
"""


def _install_plugin(tmp_path: Path) -> Path:
    """``pip install -e`` the plugin into a prefix of its own; return its site-packages."""
    source = tmp_path / "plugin"
    (source / "my_csp_plugin").mkdir(parents=True)
    (source / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (source / "my_csp_plugin" / "__init__.py").write_text("")
    (source / "my_csp_plugin" / "method.py").write_text(PLUGIN_MODULE)
    (source / "my_csp_plugin" / "my-csp.toml").write_text(PLUGIN_CARD)
    prefix = tmp_path / "prefix"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    pip += ["--no-build-isolation", "--prefix", str(prefix), "-e", str(source)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix)}))
    assert site.is_dir(), site
    return site


def _bench_python(site: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Python running ``code`` with ``args`` and what is installed in ``site``.

    ``site.addsitedir`` (not only PYTHONPATH) so that the editable install's .pth runs.
    """
    launcher = f"import site, sys; site.addsitedir(sys.argv.pop(1)); {code}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    return subprocess.run(
        [sys.executable, "-c", launcher, str(site), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow  # pip install and a `bench run` subprocess
def test_installed_plugin_runs_with_bench_run(tiny_root: Path, tmp_path: Path) -> None:
    site = _install_plugin(tmp_path)
    results = tmp_path / "results"
    done = _bench_python(
        site,
        "import runpy; runpy.run_module('bench.cli', run_name='__main__')",
        *"run --methods my-csp --datasets synthetic-tiny --backbone tiny-random".split(),
        *("--seeds", "0", "--no-mlflow", "--data-root", str(tiny_root)),
        *("--results-dir", str(results)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted((results / "runs").glob("*/*/*.json"))
    assert [f.parent.name for f in files] == ["my-csp"]
    result = json.loads(files[0].read_text())
    assert result["status"] == "complete"
    assert result["config"]["method"] == "my-csp"
    assert result["config"]["hparams"]["lr"] == 2e-3  # the plugin's card, not csp's
    assert result["fit"]["epochs_run"] == 1
    assert 0.0 <= result["metrics"]["test"]["cw"]["auc"] <= 1.0
    # listed after the built-in methods (its card has no order), so --methods all runs it
    code = "from bench.methods import method_names; print(','.join(method_names()))"
    names = _bench_python(site, code)
    assert names.returncode == 0, names.stderr
    assert names.stdout.strip().split(",") == [*BUILTIN, "my-csp"]
