"""The bad-input catalogue: every bad input gives ONE error line, exit status 2, no traceback.

Each case goes through the command line (click's CliRunner, in process; one case needs a
subprocess for its environment). The error line must name the file or value at fault and
say what to do. Lines printed before it (the random-weights warning, progress bars, download
notes) are allowed; the error line is the only ``error:`` line, it is the last line, and no
earlier result is overwritten.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from bench.cli import cli

Case = Callable[[Path, Path, Callable[..., Path]], tuple[list[str], list[str]]]


# --------------------------------------------------------------------------- helpers
def _run_args(results: Path, data_root: Path, *args: str) -> list[str]:
    """``bench run`` on synthetic-tiny with tiny-random, one seed, no training, no MLflow."""
    base = {
        "--methods": "clip",
        "--datasets": "synthetic-tiny",
        "--seeds": "0",
        "--backbone": "tiny-random",
        "--epochs": "0",
        "--data-root": str(data_root),
        "--results-dir": str(results),
    }
    given = dict(zip(args[::2], args[1::2], strict=False))
    flags = [a for a in args if a.startswith("--") and a not in given and a not in given.values()]
    merged = {**base, **given}
    out = ["run", "--no-mlflow"]
    for key, value in merged.items():
        out += [key, value]
    return out + [f for f in flags if f != "--no-mlflow"]


def _invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        details = "".join(traceback.format_exception(result.exception))
        raise AssertionError(f"uncaught exception (a traceback for the user):\n{details}")
    return result.exit_code, result.output


def _assert_one_error_line(code: int, output: str, fragments: list[str]) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 2, output
    assert "Traceback" not in output, output
    assert len(errors) == 1 and lines[-1] == errors[0], output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def _zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def _cgqa_download(root: Path, archive: bytes, record_sha: str | None = None) -> list[str]:
    """``bench data download cgqa`` with the archive placed by hand (no network)."""
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "cgqa.zip").write_bytes(archive)
    if record_sha is not None:
        (root / "cgqa").mkdir()
        (root / "cgqa" / ".bench-download.json").write_text(
            json.dumps({"archives": {"cgqa.zip": {"sha256": record_sha}}})
        )
    return ["data", "download", "cgqa", "--root", str(root)]


class _Pickled:
    """An object torch.load(weights_only=True) must refuse to rebuild."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (os.system, ("echo pwned",))


def _state_file(folder: Path, state: dict[str, Any], names: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "trainable_state.pt"
    torch.save(state, path)
    if names is not None:
        (folder / "trainable_state_names.json").write_text(json.dumps(names))
    return path


def _tiny_vocabulary_shape(tiny_root: Path) -> tuple[list[str], list[str]]:
    from bench.data.czsl import load_dataset

    dataset = load_dataset(tiny_root / "synthetic-tiny")
    return list(dataset.attrs), list(dataset.objs)


# --------------------------------------------------------------------------- the catalogue
# Each case: (tmp_path, tiny_root, make_czsl_folder) -> (CLI args, fragments of the error line)
def _folder_case(**kwargs: Any) -> Case:
    def case(tmp: Path, data: Path, make: Callable[..., Path]) -> tuple[list[str], list[str]]:
        folder = make("handmade", **kwargs)
        return _run_args(tmp / "results", data, "--datasets", str(folder)), []

    return case


def _missing_pair_file(tmp, data, make):
    folder = make("handmade", skip_pair_files=["val"])
    return _run_args(tmp / "results", data, "--datasets", str(folder)), [
        str(folder / "compositional-split-natural" / "val_pairs.txt"),
        "missing pair file",
    ]


def _missing_metadata(tmp, data, make):
    folder = make("handmade", metadata=None)
    return _run_args(tmp / "results", data, "--datasets", str(folder)), [
        "missing metadata file",
        "metadata_compositional-split-natural.t7",
    ]


def _malformed_pair_line(tmp, data, make):
    pairs = {
        "train": ["red circle", "blue square extra"],
        "val": ["red circle"],
        "test": ["red circle"],
    }
    folder = make("handmade", pairs=pairs)
    return _run_args(tmp / "results", data, "--datasets", str(folder)), [
        "train_pairs.txt:2: malformed pair line 'blue square extra'"
    ]


def _missing_image(tmp, data, make):
    folder = make("handmade")
    (folder / "images" / "blue_square" / "8.jpg").unlink()
    return _run_args(tmp / "results", data, "--datasets", str(folder)), [
        str(folder / "images" / "blue_square" / "8.jpg"),
        "missing or unreadable",
    ]


def _unreadable_image(tmp, data, make):
    folder = make("handmade")
    (folder / "images" / "red_circle" / "0.jpg").write_bytes(b"this is not an image")
    return _run_args(tmp / "results", data, "--datasets", str(folder)), [
        "cannot read image",
        str(folder / "images" / "red_circle" / "0.jpg"),
    ]


def _metadata_not_a_list(tmp, data, make):
    folder = make("handmade", metadata={"image": "a.jpg"})
    return _run_args(tmp / "results", data, "--datasets", str(folder)), [
        "holds a dict, not a list of dicts"
    ]


def _metadata_row_not_a_dict(tmp, data, make):
    folder = make("handmade", metadata=[["red_circle/0.jpg", "red", "circle", "train"]])
    return _run_args(tmp / "results", data, "--datasets", str(folder)), ["row 0 is not a dict"]


def _metadata_needs_unpickling(tmp, data, make):
    folder = make("handmade", metadata=[_Pickled()])
    return _run_args(tmp / "results", data, "--datasets", str(folder)), [
        "cannot be loaded safely",
        "weights_only=True",
    ]


def _pair_without_training_image(tmp, data, make):
    pairs = {
        "train": ["red circle", "blue square"],
        "val": ["green circle"],
        "test": ["red square"],
    }
    rows = [
        {"image": "red_circle/0.jpg", "attr": "red", "obj": "circle", "set": "train"},
        {"image": "blue_square/1.jpg", "attr": "blue", "obj": "square", "set": "train"},
        {"image": "green_circle/2.jpg", "attr": "green", "obj": "circle", "set": "val"},
        {"image": "red_square/3.jpg", "attr": "red", "obj": "square", "set": "test"},
    ]
    folder = make("handmade", pairs=pairs, rows=rows)
    return _run_args(tmp / "results", data, "--datasets", str(folder)), [
        "val_pairs.txt names attribute 'green', which has no training image"
    ]


def _empty_pair_file(tmp, data, make):
    folder = make("handmade", pairs={"train": ["red circle"], "val": ["red circle"], "test": []})
    return _run_args(tmp / "results", data, "--datasets", str(folder)), [
        "test_pairs.txt holds no pairs"
    ]


def _empty_split(tmp, data, make):
    rows = [
        {"image": "red_circle/0.jpg", "attr": "red", "obj": "circle", "set": "train"},
        {"image": "red_circle/1.jpg", "attr": "red", "obj": "circle", "set": "val"},
    ]
    pairs = {"train": ["red circle"], "val": ["red circle"], "test": ["red circle"]}
    folder = make("handmade", pairs=pairs, rows=rows)
    return _run_args(tmp / "results", data, "--datasets", str(folder)), ["no usable 'test' images"]


def _truncated_archive(tmp, data, make):
    archive = _zip({"cgqa/images/0.jpg": b"x" * 4000, "cgqa/metadata.t7": b"y" * 4000})
    return _cgqa_download(tmp / "root", archive[: len(archive) // 2]), [
        "cgqa.zip is truncated or corrupt",
        "delete it",
    ]


def _checksum_mismatch(tmp, data, make):
    archive = _zip({"cgqa/images/0.jpg": b"x"})
    return _cgqa_download(tmp / "root", archive, record_sha="0" * 64), [
        "sha256 mismatch for",
        "cgqa.zip",
    ]


def _archive_member_escapes(tmp, data, make):
    archive = _zip({"cgqa/images/0.jpg": b"x", "cgqa/../../evil.txt": b"pwned"})
    return _cgqa_download(tmp / "root", archive), [
        "refusing to extract cgqa.zip",
        "'..' component",
    ]


def _archive_member_is_a_link(tmp, data, make):
    archive = _zip({"cgqa/images/0.jpg": b"x"}, symlinks={"cgqa/images/1.jpg": "/etc/passwd"})
    return _cgqa_download(tmp / "root", archive), ["refusing to extract", "symbolic link"]


def _word_missing_from_vectors(tmp, data, make):
    attrs, objs = _tiny_vocabulary_shape(data)
    glove = tmp / "glove.txt"
    words = [w.lower() for w in attrs + objs[1:]]  # the first object has no vector
    glove.write_text("".join(f"{w} 0.1 0.2 0.3\n" for w in words))
    args = _run_args(tmp / "results", data, "--word-vectors", f"glove:{glove}")
    return args, [objs[0].lower()]


def _state_of_wrong_shape(tmp, data, make):
    path = _state_file(tmp / "saved", {"vocabulary": torch.zeros(3, 7)})
    args = _run_args(tmp / "results", data, "--methods", "csp", "--load-state", str(path))
    return args, [f"--load-state {path}", "shape (3, 7)"]


def _state_with_other_names(tmp, data, make):
    attrs, objs = _tiny_vocabulary_shape(data)
    from bench.backbones import load_backbone

    width = int(
        load_backbone("tiny-random", device="cpu")
        .token_embeddings(torch.zeros(1, 1, dtype=torch.long))
        .shape[-1]
    )
    names = {"attrs": list(reversed(attrs)), "objs": objs}
    path = _state_file(
        tmp / "saved", {"vocabulary": torch.zeros(len(attrs) + len(objs), width)}, names
    )
    args = _run_args(tmp / "results", data, "--methods", "csp", "--load-state", str(path))
    return args, [f"--load-state {path}", "attrs differ from dataset"]


def _state_needs_unpickling(tmp, data, make):
    path = _state_file(tmp / "saved", {"vocabulary": _Pickled()})
    args = _run_args(tmp / "results", data, "--methods", "csp", "--load-state", str(path))
    return args, [f"--load-state: {path} cannot be loaded safely"]


def _state_for_a_method_that_does_not_train(tmp, data, make):
    path = _state_file(tmp / "saved", {"vocabulary": torch.zeros(1, 1)})
    return _run_args(tmp / "results", data, "--load-state", str(path)), [
        "--load-state: none of the methods clip trains"
    ]


def _results_dir_not_writable(tmp, data, make):
    blocker = tmp / "a-file"
    blocker.write_text("not a folder")
    return _run_args(blocker / "results", data), [
        f"results folder {blocker / 'results'} is not writable"
    ]


def _simple(*args: str, fragments: list[str]) -> Case:
    def case(tmp: Path, data: Path, make: Callable[..., Path]) -> tuple[list[str], list[str]]:
        return _run_args(tmp / "results", data, *args), fragments

    return case


CASES: dict[str, Case] = {
    "unknown-method": _simple("--methods", "nosuch", fragments=["unknown method 'nosuch'"]),
    "unknown-dataset": _simple(
        "--datasets", "nosuch-dataset", fragments=["unknown dataset 'nosuch-dataset'"]
    ),
    "unknown-backbone": _simple("--backbone", "NoSuchNet-99", fragments=["NoSuchNet-99"]),
    "unknown-backbone-tag": _simple(
        "--backbone", "ViT-B-32:nosuchtag", fragments=["ViT-B-32:nosuchtag", "nosuchtag"]
    ),
    "dataset-folder-missing": _simple(
        "--datasets", "./no/such/folder", fragments=["./no/such/folder does not exist"]
    ),
    "missing-pair-file": _missing_pair_file,
    "missing-metadata": _missing_metadata,
    "malformed-pair-line": _malformed_pair_line,
    "missing-image": _missing_image,
    "unreadable-image": _unreadable_image,
    "metadata-not-a-list": _metadata_not_a_list,
    "metadata-row-not-a-dict": _metadata_row_not_a_dict,
    "metadata-needs-unpickling": _metadata_needs_unpickling,
    "pair-without-training-image": _pair_without_training_image,
    "empty-pair-file": _empty_pair_file,
    "empty-split": _empty_split,
    "truncated-archive": _truncated_archive,
    "checksum-mismatch": _checksum_mismatch,
    "archive-member-escapes": _archive_member_escapes,
    "archive-member-is-a-link": _archive_member_is_a_link,
    "word-missing-from-vectors": _word_missing_from_vectors,
    "state-of-wrong-shape": _state_of_wrong_shape,
    "state-with-other-names": _state_with_other_names,
    "state-needs-unpickling": _state_needs_unpickling,
    "state-missing": _simple(
        "--methods", "csp", "--load-state", "no-such-state.pt", fragments=["no-such-state.pt"]
    ),
    "state-for-a-method-that-does-not-train": _state_for_a_method_that_does_not_train,
    "seeds-negative": _simple("--seeds", "-1", fragments=["--seeds: -1 is out of range"]),
    "seeds-too-large": _simple("--seeds", str(2**32), fragments=["--seeds", "out of range"]),
    "seeds-not-integers": _simple("--seeds", "a,b", fragments=["--seeds: 'a,b'"]),
    "epochs-out-of-range": _simple(
        "--epochs", "100001", fragments=["--epochs: 100001 is out of range"]
    ),
    "topk-out-of-range": _simple("--topk", "0", fragments=["--topk: 0 is out of range"]),
    "epochs-not-an-integer": _simple(
        "--epochs", "abc", fragments=["'--epochs': 'abc' is not a valid integer", "--help"]
    ),
    "augment-not-a-choice": _simple("--augment", "bogus", fragments=["'--augment'", "'bogus'"]),
    "results-dir-not-writable": _results_dir_not_writable,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_error_line(
    name: str, tmp_path: Path, tiny_root: Path, make_czsl_folder: Callable[..., Path]
) -> None:
    args, fragments = CASES[name](tmp_path, tiny_root, make_czsl_folder)
    code, output = _invoke(args)
    _assert_one_error_line(code, output, fragments)
    assert not list(tmp_path.rglob("evil.txt"))


# --------------------------------------------------------------------------- special cases
@pytest.mark.slow
def test_missing_backbone_weights_offline_fail_fast(tmp_path: Path, tiny_root: Path) -> None:
    """Pretrained weights neither cached nor downloadable: one line, quickly, no network."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "HOME": str(tmp_path / "home"),
    }
    args = _run_args(tmp_path / "results", tiny_root, "--backbone", "ViT-B-32:openai")
    command = [sys.executable, "-c", "from bench.cli import main; main()", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    _assert_one_error_line(
        done.returncode, done.stdout + done.stderr, ["--backbone ViT-B-32:openai"]
    )


def test_disk_full_while_writing_keeps_the_previous_result(
    tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC in the middle of a result write: one line naming the file, old result intact."""
    results = tmp_path / "results"
    args = _run_args(results, tiny_root)
    code, output = _invoke(args)
    assert code == 0, output
    (path,) = results.glob("runs/*/clip/*.json")
    before = path.read_bytes()

    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").is_dir() else ""
        if f".{path.name}." in target or not target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, output = _invoke([*args, "--rerun"])
    _assert_one_error_line(
        code, output, [f"disk full while writing {path}", "free space and rerun"]
    )
    assert path.read_bytes() == before
    assert not list(path.parent.glob(".*.tmp"))


def test_disk_full_outside_the_runner_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ENOSPC no caller annotated still becomes one line (BenchGroup)."""
    import bench.cli.data as data_cli

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/some/file")

    monkeypatch.setattr(data_cli, "_root", full)
    code, output = _invoke(["data", "list"])
    _assert_one_error_line(code, output, ["disk full while writing /some/file"])


def test_corrupt_result_file_is_reported_and_redone(tmp_path: Path, tiny_root: Path) -> None:
    results = tmp_path / "results"
    args = _run_args(results, tiny_root)
    assert _invoke(args)[0] == 0
    (path,) = results.glob("runs/*/clip/*.json")
    good = json.loads(path.read_text())
    for damage in ('{"status": "complete", "metr', json.dumps({**good, "metrics": {}})):
        path.write_text(damage)
        code, output = _invoke(args)
        assert code == 0, output
        assert f"result file {path}" in output and "redoing the cell" in output, output
        assert "1 cells run, 0 already done" in output
        assert json.loads(path.read_text())["metrics"] == good["metrics"]
