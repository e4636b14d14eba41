"""Security checks: no unsafe deserialisation or code evaluation, safe archives, a local UI.

Extraction attacks are tested in depth at the library level in ``tests/data/test_download.py``
(zip: ``..``, absolute, backslash, symlink; tar: symlink, hard link, devices, fifo, absolute,
``..``; truncated archives); ``tests/test_bad_inputs.py`` runs ``..`` and symlink members
through the command line. Here: an absolute member through the command line, the source audit
and the UI's bind address.
"""

from __future__ import annotations

import ast
import io
import pkgutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import bench
from bench.cli import cli

SOURCES = sorted(Path(bench.__file__).parent.rglob("*.py"))


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _name(func: ast.expr) -> str:
    """``a.b.c`` for an attribute chain, ``f`` for a name, "" otherwise."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str) -> Any:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


def _safe_loader(call: ast.Call) -> bool:
    """``Loader=yaml.SafeLoader`` (or ``CSafeLoader``) among the keywords of a ``yaml.load``."""
    return any(
        keyword.arg == "Loader" and _name(keyword.value).endswith("SafeLoader")
        for keyword in call.keywords
    )


def _audit(source: str, where: str) -> list[str]:
    """The unsafe calls in ``source`` (a module's text), one line each."""
    found = []
    for call in _calls(ast.parse(source, filename=where)):
        name = _name(call.func)
        line = f"{where}:{call.lineno}: {name}"
        if name == "torch.load" and _keyword(call, "weights_only") is not True:
            found.append(f"{line} without weights_only=True")
        elif name in ("pickle.load", "pickle.loads", "marshal.loads", "dill.load"):
            found.append(f"{line} (unpickles untrusted data)")
        elif name in ("eval", "exec"):
            found.append(f"{line} (evaluates code)")
        elif name == "yaml.unsafe_load" or (name == "yaml.load" and not _safe_loader(call)):
            found.append(f"{line} (use yaml.safe_load)")
        elif name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") is True:
            found.append(f"{line} with allow_pickle=True")
        elif _keyword(call, "shell") is True:
            found.append(f"{line} with shell=True")
        elif name.split(".")[-1] == "extractall":
            found.append(f"{line} (unchecked extraction; use bench.data.download.safe_extract)")
    return found


def _findings() -> list[str]:
    root = Path(bench.__file__).parent.parent
    return [
        finding
        for path in SOURCES
        for finding in _audit(path.read_text(encoding="utf-8"), str(path.relative_to(root)))
    ]


def _module_name(path: Path) -> str:
    parts = path.relative_to(Path(bench.__file__).parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_sources_are_audited() -> None:
    # every module of the package, subpackages included, is read by the audit ...
    modules = {"bench"} | {info.name for info in pkgutil.walk_packages(bench.__path__, "bench.")}
    assert modules <= {_module_name(path) for path in SOURCES}
    # ... and the audit flags each unsafe call it looks for (and not their safe forms)
    unsafe = [
        "torch.load(f)",
        "torch.load(f, weights_only=False)",
        "pickle.loads(b)",
        "marshal.loads(b)",
        "eval(text)",
        "exec(text)",
        "yaml.load(text)",
        "np.load(f, allow_pickle=True)",
        "subprocess.run(cmd, shell=True)",
        "archive.extractall(dest)",
    ]
    safe = [
        "torch.load(f, weights_only=True)",
        "yaml.load(text, Loader=yaml.SafeLoader)",
        "np.load(f)",
        "subprocess.run(cmd)",
    ]
    found = _audit("\n".join([*unsafe, *safe]), "planted.py")
    assert [int(line.split(":")[1]) for line in found] == list(range(1, len(unsafe) + 1))


def test_no_unsafe_loading_or_code_evaluation() -> None:
    assert _findings() == []


def test_absolute_archive_member_refused_through_the_cli(tmp_path: Path) -> None:
    target = tmp_path / "outside" / "evil.txt"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cgqa/images/0.jpg", b"x")
        archive.writestr(str(target), b"pwned")
    root = tmp_path / "root"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "cgqa.zip").write_bytes(buffer.getvalue())
    result = CliRunner().invoke(cli, ["data", "download", "cgqa", "--root", str(root)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has an absolute path" in errors[0], result.output
    assert not target.exists()
    assert not (root / "cgqa" / "images").exists()


@pytest.fixture
def ui_command(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    from bench.report import ui

    launched: list[list[str]] = []

    def serve(command: list[str], *args: Any, **kwargs: Any) -> int:
        launched.append(list(command))
        return 0

    monkeypatch.setattr(ui, "serve_ui", serve)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return launched


@pytest.mark.parametrize(
    ("extra", "host", "warns"),
    [([], "127.0.0.1", False), (["--host", "0.0.0.0"], "0.0.0.0", True)],
    ids=["default-loopback", "explicit-host-warns"],
)
def test_ui_binds_to_loopback_unless_told(
    ui_command: list[list[str]], tmp_path: Path, extra: list[str], host: str, warns: bool
) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"")
    result = CliRunner().invoke(cli, ["ui", "--results-dir", str(tmp_path), *extra])
    assert result.exit_code == 0, result.output
    (command,) = ui_command
    assert command[command.index("--host") + 1] == host
    assert ("warning:" in result.output) is warns, result.output
