"""Tests for the bench.data.download package against a local HTTP server serving archives built here."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from rich.console import Console

import bench.data.download as dl
from bench.cards import load_card
from bench.data.czsl import METADATA_FILE
from bench.data.download import recipes
from bench.errors import BenchError

# --------------------------------------------------------------------------- local server


@dataclass
class Served:
    """State of the local HTTP server: files, behaviour switches and a request log."""

    files: dict[str, bytes] = field(default_factory=dict)
    range_support: bool = True
    truncate_once: set[str] = field(default_factory=set)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    base: str = ""

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def ranges(self) -> list[str]:
        return [h["Range"] for _, h in self.requests if "Range" in h]


def _handler(state: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802
            name = self.path.lstrip("/")
            state.requests.append((name, dict(self.headers.items())))
            data = state.files.get(name)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            header = self.headers.get("Range")
            if state.range_support and header and header.startswith("bytes="):
                start = int(header[len("bytes=") :].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if name in state.truncate_once:
                state.truncate_once.discard(name)
                body = body[: len(body) // 2]
                self.close_connection = True
            self.wfile.write(body)
            state.sent.append(len(body))

    return Handler


@pytest.fixture
def server() -> Iterator[Served]:
    state = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _no_env_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dl.ENV_BASE_URL, raising=False)


def _console() -> Console:
    return Console(file=io.StringIO(), width=400, color_system=None)


def _text(console: Console) -> str:
    return console.file.getvalue()  # type: ignore[attr-defined]


def _closed_port_url(name: str) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


# --------------------------------------------------------------------------- archives


def _t7(rows: list[dict[str, str]]) -> bytes:
    buffer = io.BytesIO()
    torch.save(rows, buffer)
    return buffer.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar_gz(entries: dict[str, bytes], extra: Sequence[tarfile.TarInfo] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return buffer.getvalue()


def _pairs(*pairs: str) -> bytes:
    return ("\n".join(pairs) + "\n").encode()


MIT_ROWS = [
    {"image": "ancient_building/1.jpg", "attr": "ancient", "obj": "building", "set": "train"},
    {"image": "old_car/2.jpg", "attr": "old", "obj": "car", "set": "test"},
]
UT_ROWS = [
    {
        "image": "Leather_Boots.Ankle/100.1.jpg",
        "_image": "Boots/Ankle/A. Testoni/100.1.jpg",
        "attr": "Leather",
        "obj": "Boots.Ankle",
        "set": "train",
    },
    {
        "image": "Canvas_Shoes.Flats/200.2.jpg",
        "_image": "Shoes/Flats/Keds/200.2.jpg",
        "attr": "Canvas",
        "obj": "Shoes.Flats",
        "set": "val",
    },
]


def _split_entries(prefix: str, rows: list[dict[str, str]], pair: str) -> dict[str, bytes]:
    return {
        f"{prefix}compositional-split-natural/train_pairs.txt": _pairs(pair),
        f"{prefix}compositional-split-natural/val_pairs.txt": _pairs(pair),
        f"{prefix}compositional-split-natural/test_pairs.txt": _pairs(pair),
        f"{prefix}metadata_compositional-split-natural.t7": _t7(rows),
    }


def splits_tarball(extra: Sequence[tarfile.TarInfo] = ()) -> bytes:
    """The shared compositional_split_natural.tar.gz (mit-states/ and ut-zap50k/)."""
    entries = _split_entries("mit-states/", MIT_ROWS, "ancient building")
    entries |= _split_entries("ut-zap50k/", UT_ROWS, "Leather Boots.Ankle")
    return _tar_gz(entries, extra)


def mit_zip() -> bytes:
    return _zip(
        {
            "release_dataset/images/ancient building/1.jpg": b"mit-1",
            "release_dataset/images/ancient building/3.jpg": b"mit-3",
            "release_dataset/images/old car/2.jpg": b"mit-2",
            "release_dataset/meta_data/adjectives.txt": b"ancient\nold\n",
            "release_dataset/README.txt": b"readme",
        }
    )


def ut_zip() -> bytes:
    return _zip(
        {
            "ut-zap50k-images/Boots/Ankle/A. Testoni/100.1.jpg": b"ut-1",
            "ut-zap50k-images/Shoes/Flats/Keds/200.2.jpg": b"ut-2",
            "ut-zap50k-images/Shoes/Flats/Keds/999.9.jpg": b"ut-unlisted",
        }
    )


def cgqa_zip(top: str = "cgqa/", extra: dict[str, bytes] | None = None) -> bytes:
    entries = {f"{top}images/{i}.jpg": f"cgqa-{i}".encode() for i in range(3)}
    rows = [{"image": "0.jpg", "attr": "red", "obj": "car", "set": "train"}]
    entries |= _split_entries(top, rows, "red car")
    return _zip(entries | (extra or {}))


def _serve_cgqa(server: Served, data: bytes | None = None) -> dict[str, str]:
    server.files["cgqa.zip"] = cgqa_zip() if data is None else data
    return {"cgqa.zip": server.url("cgqa.zip")}


def _serve_mit(server: Served, tarball: bytes | None = None) -> dict[str, str]:
    server.files["release_dataset.zip"] = mit_zip()
    server.files["splits.tar.gz"] = splits_tarball() if tarball is None else tarball
    return {"images": server.url("release_dataset.zip"), "splits": server.url("splits.tar.gz")}


def _assert_nothing_outside(root: Path, tmp_path: Path) -> None:
    allowed = {root}
    for path in tmp_path.iterdir():
        assert path in allowed, f"unexpected {path}"


# --------------------------------------------------------------------------- full runs


def test_mit_states_download_and_layout(server: Served, tmp_path: Path) -> None:
    console = _console()
    root = tmp_path / "data"
    out = dl.download_dataset("mit-states", root, urls_override=_serve_mit(server), console=console)

    assert out == root / "mit-states"
    assert (out / "images" / "ancient_building" / "1.jpg").read_bytes() == b"mit-1"
    assert (out / "images" / "ancient_building" / "3.jpg").is_file()
    assert (out / "images" / "old_car" / "2.jpg").is_file()
    assert not (out / "images" / "ancient building").exists()
    assert not (out / "meta_data").exists() and not (out / "README.txt").exists()
    for split in ("train", "val", "test"):
        assert (out / "compositional-split-natural" / f"{split}_pairs.txt").is_file()
    rows = torch.load(out / "metadata_compositional-split-natural.t7", weights_only=True)
    assert rows == MIT_ROWS
    assert dl.dataset_is_complete(out)
    assert not list(out.glob(".bench-extract-*"))

    record = json.loads((out / dl.RECORD_FILE).read_text())
    entry = record["archives"]["release_dataset.zip"]
    assert entry["sha256"] == hashlib.sha256(mit_zip()).hexdigest()
    assert entry["url"] == server.url("release_dataset.zip")
    assert record["complete"] is True
    text = _text(console)
    assert "recorded, not verified" in text and "ready" in text
    assert (root / "downloads" / "release_dataset.zip").is_file()
    assert not list((root / "downloads").glob("*.part"))


def test_ut_zappos_download_and_reorganisation(server: Served, tmp_path: Path) -> None:
    server.files["ut.zip"] = ut_zip()
    server.files["splits.tar.gz"] = splits_tarball()
    urls = {"ut-zap50k-images.zip": server.url("ut.zip"), "splits": server.url("splits.tar.gz")}
    out = dl.download_dataset("ut-zappos", tmp_path, urls_override=urls, console=_console())

    assert out == tmp_path / "ut-zappos"
    assert (out / "_images" / "Boots" / "Ankle" / "A. Testoni" / "100.1.jpg").is_file()
    assert (out / "images" / "Leather_Boots.Ankle" / "100.1.jpg").read_bytes() == b"ut-1"
    assert (out / "images" / "Canvas_Shoes.Flats" / "200.2.jpg").read_bytes() == b"ut-2"
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "Canvas_Shoes.Flats",
        "Leather_Boots.Ankle",
    ]
    assert torch.load(out / METADATA_FILE, weights_only=True) == UT_ROWS
    assert (out / "compositional-split-natural" / "train_pairs.txt").read_bytes() == _pairs(
        "Leather Boots.Ankle"
    )


@pytest.mark.parametrize("top", ["cgqa/", ""], ids=["top-folder", "no-top-folder"])
def test_cgqa_download_and_layout(server: Served, tmp_path: Path, top: str) -> None:
    urls = _serve_cgqa(server, cgqa_zip(top))
    out = dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=_console())
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]
    assert (out / "compositional-split-natural" / "val_pairs.txt").is_file()
    assert (out / METADATA_FILE).is_file()
    assert not (out / "cgqa").exists()


def test_env_base_url(server: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _serve_cgqa(server)
    monkeypatch.setenv(dl.ENV_BASE_URL, server.base + "/")
    out = dl.download_dataset("cgqa", tmp_path, console=_console())
    assert dl.dataset_is_complete(out)
    assert [name for name, _ in server.requests] == ["cgqa.zip"]


def test_progress_bar_on_a_terminal(server: Served, tmp_path: Path) -> None:
    urls = _serve_cgqa(server)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    out = dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=console)
    assert dl.dataset_is_complete(out)
    assert "cgqa.zip" in _text(console)


@pytest.mark.parametrize("name", ["mit-states", "ut-zappos", "cgqa"])
def test_cards_have_valid_archives(name: str) -> None:
    card = load_card("datasets", name)
    assert card["kind"] == "download" and card["folder"] == name
    specs = dl.archive_specs(card)
    assert specs and all(spec.urls for spec in specs)
    assert all(url.startswith(("http://", "https://")) for spec in specs for url in spec.urls)
    # together the archives provide the whole layout: one "all", or images plus splits
    assert sorted(spec.role for spec in specs) in (["all"], ["images", "splits"]), name
    assert len({spec.filename for spec in specs}) == len(specs)


def test_file_url_mirror(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror" / "cgqa.zip"
    mirror.parent.mkdir()
    mirror.write_bytes(cgqa_zip())
    urls = {"cgqa.zip": mirror.as_uri()}
    out = dl.download_dataset("cgqa", tmp_path / "data", urls_override=urls, console=_console())
    assert dl.dataset_is_complete(out)


# --------------------------------------------------------------------------- idempotence


def test_second_call_is_a_no_op(server: Served, tmp_path: Path) -> None:
    urls = _serve_cgqa(server)
    dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=_console())
    count = len(server.requests)
    console = _console()
    dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=console)
    assert len(server.requests) == count
    assert "nothing to do" in _text(console)


def test_archive_placed_by_hand_is_used(server: Served, tmp_path: Path) -> None:
    (tmp_path / "cgqa").mkdir()
    (tmp_path / "cgqa" / "cgqa.zip").write_bytes(cgqa_zip())
    out = dl.download_dataset(
        "cgqa", tmp_path, urls_override=_serve_cgqa(server), console=_console()
    )
    assert dl.dataset_is_complete(out)
    assert server.requests == []


def test_partial_run_skips_extracted_archives(server: Served, tmp_path: Path) -> None:
    urls = _serve_mit(server)
    del server.files["splits.tar.gz"]
    with pytest.raises(BenchError):
        dl.download_dataset("mit-states", tmp_path, urls_override=urls, console=_console())
    assert (tmp_path / "mit-states" / "images" / "old_car" / "2.jpg").is_file()

    server.files["splits.tar.gz"] = splits_tarball()
    server.requests.clear()
    console = _console()
    out = dl.download_dataset("mit-states", tmp_path, urls_override=urls, console=console)
    assert dl.dataset_is_complete(out)
    assert [name for name, _ in server.requests] == ["splits.tar.gz"]
    assert "release_dataset.zip: already extracted" in _text(console)


# --------------------------------------------------------------------------- resuming


def test_resume_with_range_support(server: Served, tmp_path: Path) -> None:
    data = cgqa_zip()
    urls = _serve_cgqa(server, data)
    half = len(data) // 2
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "cgqa.zip.part").write_bytes(data[:half])

    out = dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=_console())
    assert server.ranges() == [f"bytes={half}-"]
    assert server.sent == [len(data) - half]
    assert (tmp_path / "downloads" / "cgqa.zip").read_bytes() == data
    assert not (tmp_path / "downloads" / "cgqa.zip.part").exists()
    assert dl.dataset_is_complete(out)


def test_server_without_range_restarts(server: Served, tmp_path: Path) -> None:
    data = cgqa_zip()
    urls = _serve_cgqa(server, data)
    server.range_support = False
    (tmp_path / "downloads").mkdir()
    stale = b"stale bytes from another file"
    (tmp_path / "downloads" / "cgqa.zip.part").write_bytes(stale)

    console = _console()
    dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=console)
    assert server.ranges() == [f"bytes={len(stale)}-"]  # asked, but got a 200 with everything
    assert (tmp_path / "downloads" / "cgqa.zip").read_bytes() == data
    assert "does not support resuming" in _text(console)


def test_broken_transfer_is_resumed_in_the_same_call(server: Served, tmp_path: Path) -> None:
    data = cgqa_zip()
    urls = _serve_cgqa(server, data)
    server.truncate_once.add("cgqa.zip")
    dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=_console())
    half = len(data) // 2
    assert server.ranges() == [f"bytes={half}-"]
    assert (tmp_path / "downloads" / "cgqa.zip").read_bytes() == data


def test_complete_part_file_with_416(server: Served, tmp_path: Path) -> None:
    data = cgqa_zip()
    urls = _serve_cgqa(server, data)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "cgqa.zip.part").write_bytes(data)
    dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=_console())
    assert (tmp_path / "downloads" / "cgqa.zip").read_bytes() == data


# --------------------------------------------------------------------------- checksums


def _card_with_sha(monkeypatch: pytest.MonkeyPatch, name: str, sha: str) -> None:
    card = copy.deepcopy(load_card("datasets", name))
    for archive in card["archives"]:
        archive["sha256"] = sha
    monkeypatch.setattr(recipes, "load_card", lambda kind, n: card)


def test_card_checksum_mismatch(
    server: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = cgqa_zip()
    urls = _serve_cgqa(server, data)
    _card_with_sha(monkeypatch, "cgqa", "0" * 64)
    with pytest.raises(BenchError) as info:
        dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=_console())
    message = str(info.value)
    assert "cgqa.zip" in message and "0" * 64 in message
    assert hashlib.sha256(data).hexdigest() in message
    assert "\n" not in message
    assert not (tmp_path / "downloads" / "cgqa.zip").exists()
    assert not (tmp_path / "downloads" / "cgqa.zip.part").exists()
    assert not (tmp_path / "cgqa" / "images").exists()


def test_card_checksum_verified(
    server: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = cgqa_zip()
    urls = _serve_cgqa(server, data)
    _card_with_sha(monkeypatch, "cgqa", hashlib.sha256(data).hexdigest())
    console = _console()
    out = dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=console)
    assert dl.dataset_is_complete(out)
    assert "sha256 verified (from the dataset card)" in _text(console)
    assert "recorded, not verified" not in _text(console)


def test_unknown_checksum_recorded_then_verified(server: Served, tmp_path: Path) -> None:
    data = cgqa_zip()
    urls = _serve_cgqa(server, data)
    console = _console()
    out = dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=console)
    digest = hashlib.sha256(data).hexdigest()
    record = json.loads((out / dl.RECORD_FILE).read_text())
    assert record["archives"]["cgqa.zip"]["sha256"] == digest
    assert record["archives"]["cgqa.zip"]["sha256_source"] == "recorded"
    assert "recorded, not verified" in _text(console)

    console = _console()
    dl.download_dataset("cgqa", tmp_path, urls_override=urls, force=True, console=console)
    assert "verified (recorded in" in _text(console)

    # A different archive in its place is caught against the recorded value.
    other = cgqa_zip(extra={"cgqa/images/extra.jpg": b"x"})
    (tmp_path / "downloads" / "cgqa.zip").write_bytes(other)
    with pytest.raises(BenchError) as info:
        dl.download_dataset("cgqa", tmp_path, urls_override=urls, force=True, console=_console())
    message = str(info.value)
    assert digest in message and hashlib.sha256(other).hexdigest() in message
    assert "delete the file" in message
    assert not (out / "images" / "extra.jpg").exists()


def test_recorded_checksum_checked_on_redownload(server: Served, tmp_path: Path) -> None:
    urls = _serve_cgqa(server)
    out = dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=_console())
    (tmp_path / "downloads" / "cgqa.zip").unlink()
    server.files["cgqa.zip"] = cgqa_zip(extra={"cgqa/images/new.jpg": b"changed upstream"})
    with pytest.raises(BenchError) as info:
        dl.download_dataset("cgqa", tmp_path, urls_override=urls, force=True, console=_console())
    message = str(info.value)
    assert "sha256 mismatch" in message and str(out / dl.RECORD_FILE) in message
    assert not (tmp_path / "downloads" / "cgqa.zip").exists()
    assert not (out / "images" / "new.jpg").exists()


def test_hand_placed_archive_with_wrong_checksum(
    server: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = _serve_cgqa(server)
    _card_with_sha(monkeypatch, "cgqa", "1" * 64)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "cgqa.zip").write_bytes(cgqa_zip())
    with pytest.raises(BenchError, match="sha256 mismatch for .*cgqa.zip: expected 1111"):
        dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=_console())
    assert server.requests == []
    assert not (tmp_path / "cgqa" / "images").exists()


# --------------------------------------------------------------------------- mirrors


def test_mirror_fallback(server: Served, tmp_path: Path) -> None:
    _serve_cgqa(server)
    urls = {"cgqa.zip": [server.url("missing.zip"), server.url("cgqa.zip")]}
    out = dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=_console())
    assert dl.dataset_is_complete(out)
    assert [name for name, _ in server.requests] == ["missing.zip", "cgqa.zip"]
    record = json.loads((out / dl.RECORD_FILE).read_text())
    assert record["archives"]["cgqa.zip"]["url"] == server.url("cgqa.zip")


def test_all_mirrors_fail(server: Served, tmp_path: Path) -> None:
    refused = _closed_port_url("cgqa.zip")
    urls = {"cgqa.zip": [server.url("missing.zip"), refused]}
    with pytest.raises(BenchError) as info:
        dl.download_dataset(
            "cgqa",
            tmp_path,
            urls_override=urls,
            console=_console(),
            options=dl.DownloadOptions(timeout=5),
        )
    message = str(info.value)
    assert "\n" not in message
    assert server.url("missing.zip") in message and "HTTP 404" in message
    assert refused in message
    assert str(tmp_path / "downloads" / "cgqa.zip") in message
    assert not (tmp_path / "downloads" / "cgqa.zip").exists()


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="unknown dataset 'nope'"):
        dl.download_dataset("nope", tmp_path, console=_console())


# --------------------------------------------------------------------------- unsafe archives


@pytest.mark.parametrize(
    "member",
    ["../evil.txt", "cgqa/../../evil.txt", "ABSOLUTE", "cgqa\\..\\..\\evil.txt"],
    ids=["dotdot", "prefixed-dotdot", "absolute", "backslash"],
)
def test_zip_path_attacks_refused(server: Served, tmp_path: Path, member: str) -> None:
    root = tmp_path / "root"
    if member == "ABSOLUTE":
        member = str(tmp_path / "evil.txt")
    urls = _serve_cgqa(server, cgqa_zip(extra={member: b"pwned"}))
    with pytest.raises(BenchError) as info:
        dl.download_dataset("cgqa", root, urls_override=urls, console=_console())
    message = str(info.value)
    assert repr(member) in message and "\n" not in message
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (root / "cgqa" / "images").exists()
    assert not list((root / "cgqa").glob(".bench-extract-*"))
    _assert_nothing_outside(root, tmp_path)


def test_zip_symlink_refused(server: Served, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("cgqa/images/0.jpg", b"x")
        info = zipfile.ZipInfo("cgqa/images/link.jpg")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    urls = _serve_cgqa(server, buffer.getvalue())
    with pytest.raises(BenchError, match="symbolic link"):
        dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=_console())
    assert not (tmp_path / "cgqa" / "images").exists()


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("info", "why"),
    [
        (_special("mit-states/compositional-split-natural/x", tarfile.SYMTYPE, "/etc"), "symbolic"),
        (_special("mit-states/evil", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
        (_special("mit-states/dev", tarfile.CHRTYPE), "device"),
        (_special("mit-states/blk", tarfile.BLKTYPE), "device"),
        (_special("mit-states/pipe", tarfile.FIFOTYPE), "fifo"),
        (_special("/abs/evil", tarfile.REGTYPE), "absolute"),
        (_special("mit-states/../../evil", tarfile.REGTYPE), "'..'"),
    ],
    ids=["symlink", "hardlink", "chardev", "blockdev", "fifo", "absolute", "dotdot"],
)
def test_tar_attacks_refused(
    server: Served, tmp_path: Path, info: tarfile.TarInfo, why: str
) -> None:
    root = tmp_path / "root"
    urls = _serve_mit(server, splits_tarball(extra=[info]))
    with pytest.raises(BenchError) as excinfo:
        dl.download_dataset("mit-states", root, urls_override=urls, console=_console())
    message = str(excinfo.value)
    assert why in message and repr(info.name) in message and "\n" not in message
    out = root / "mit-states"
    assert not (out / "compositional-split-natural").exists()
    assert not (out / "metadata_compositional-split-natural.t7").exists()
    assert not list(out.glob(".bench-extract-*"))
    assert not list(tmp_path.rglob("evil")) and not list(tmp_path.rglob("pipe"))
    _assert_nothing_outside(root, tmp_path)


def test_safe_extract_refuses_outside_target(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_gz({"ok.txt": b"ok", "sub/../../escape.txt": b"x"}))
    dest = tmp_path / "dest"
    with pytest.raises(BenchError, match="escape.txt"):
        dl.safe_extract(archive, dest, console=_console())
    assert not (tmp_path / "escape.txt").exists()
    assert not (dest / "ok.txt").exists()


# --------------------------------------------------------------------------- corrupt archives


def test_truncated_zip(server: Served, tmp_path: Path) -> None:
    data = cgqa_zip()
    urls = _serve_cgqa(server, data[: len(data) // 2])
    with pytest.raises(BenchError) as info:
        dl.download_dataset("cgqa", tmp_path, urls_override=urls, console=_console())
    message = str(info.value)
    assert "cgqa.zip" in message and "truncated or corrupt" in message and "delete" in message
    assert "\n" not in message
    assert not (tmp_path / "cgqa" / "images").exists()
    # The checksum of a corrupt archive is never recorded.
    record = tmp_path / "cgqa" / dl.RECORD_FILE
    assert not record.exists() or "cgqa.zip" not in json.loads(record.read_text())["archives"]


def test_truncated_tarball(server: Served, tmp_path: Path) -> None:
    data = splits_tarball()
    urls = _serve_mit(server, data[: len(data) - 200])
    with pytest.raises(BenchError, match="splits.tar.gz|compositional_split_natural.tar.gz"):
        dl.download_dataset("mit-states", tmp_path, urls_override=urls, console=_console())
    out = tmp_path / "mit-states"
    assert not (out / "compositional-split-natural").exists()
    assert not list(out.glob(".bench-extract-*"))


def test_archive_without_expected_files(server: Served, tmp_path: Path) -> None:
    urls = _serve_mit(server, _tar_gz({"something/else.txt": b"x"}))
    with pytest.raises(BenchError, match="still lacks"):
        dl.download_dataset("mit-states", tmp_path, urls_override=urls, console=_console())
