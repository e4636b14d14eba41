"""Tests of bench.data.higher_order: the annotations file, the official CSV conversion, the
synthetic dataset's higher-order images and the ``aao-mit-states`` download."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.data.czsl import CZSLDataset, load_dataset
from bench.data.higher_order import (
    SPLIT,
    TripleSample,
    annotations_path,
    convert_official,
    distinct_triples,
    format_annotations,
    higher_order_downloads,
    load_annotations,
    with_annotation_split,
    write_annotations,
)
from bench.data.synthetic import COLOURS, PATTERNS, plan_synthetic
from bench.errors import BenchError

PAIRS = {"train": ["red circle", "blue square"], "val": ["red square"], "test": ["blue circle"]}
ROWS = [
    {"image": "red_circle/0.png", "attr": "red", "obj": "circle", "set": "train"},
    {"image": "blue_square/1.png", "attr": "blue", "obj": "square", "set": "train"},
    {"image": "red_square/2.png", "attr": "red", "obj": "square", "set": "val"},
    {"image": "blue_circle/3.png", "attr": "blue", "obj": "circle", "set": "test"},
    {"image": "blue_circle/4.png", "attr": "blue", "obj": "circle", "set": "test"},
]
#: The official file's layout: an unnamed index column, attr2 last.
OFFICIAL = (
    ",Input.image_url,Input.attr,Input.obj,Answer.ao-image-attr.label\n"
    "0,blue_circle/3.png,blue,circle,red\n"
    "1,blue_circle/4.png,blue,circle,red\n"
    "2,red_square/2.png,red,square,blue\n"
)


@pytest.fixture
def dataset(make_czsl_folder: Callable[..., Path]) -> CZSLDataset:
    return load_dataset(make_czsl_folder("mit-states", pairs=PAIRS, rows=ROWS))


def test_official_csv_is_converted_in_prompt_order(dataset: CZSLDataset) -> None:
    samples = convert_official(OFFICIAL, dataset, "official.csv")
    assert samples[0] == TripleSample("blue_circle/3.png", "blue", "red", "circle")
    assert distinct_triples(samples) == (("blue", "red", "circle"), ("red", "blue", "square"))
    path = write_annotations(dataset.root, samples)
    assert path == annotations_path(dataset.root) == dataset.root / "aao" / "annotations.csv"
    assert path.read_text(encoding="utf-8").splitlines()[:2] == [
        "image,attr,attr2,obj",
        "blue_circle/3.png,blue,red,circle",
    ]
    assert load_annotations(dataset) == samples


def test_unknown_names_are_named_in_one_line(dataset: CZSLDataset) -> None:
    text = OFFICIAL + "3,blue_circle/3.png,blue,circle,dented\n4,red_square/2.png,red,truck,blue\n"
    with pytest.raises(BenchError) as info:
        convert_official(text, dataset, "official.csv")
    message = str(info.value)
    assert "\n" not in message
    assert "'dented'" in message and "'truck'" in message and "official.csv" in message


def test_missing_image_is_named(dataset: CZSLDataset) -> None:
    text = OFFICIAL + "3,blue_circle/nope.png,blue,circle,red\n"
    with pytest.raises(BenchError, match=r"'blue_circle/nope.png'.*missing under"):
        convert_official(text, dataset, "official.csv")


def test_malformed_files(dataset: CZSLDataset) -> None:
    with pytest.raises(BenchError, match="lacks the columns"):
        convert_official("image,attr,obj\nx,y,z\n", dataset, "x.csv")
    path = annotations_path(dataset.root)
    path.parent.mkdir(parents=True)
    path.write_text("image,attr,obj\n", encoding="utf-8")
    with pytest.raises(BenchError, match="header must be image,attr,attr2,obj"):
        load_annotations(dataset)
    path.write_text("image,attr,attr2,obj\nblue_circle/3.png,blue,,circle\n", encoding="utf-8")
    with pytest.raises(BenchError, match=r"annotations.csv:2: expected four non-empty fields"):
        load_annotations(dataset)
    path.write_text(
        format_annotations([TripleSample("blue_circle/3.png", "blue", "green", "circle")]),
        encoding="utf-8",
    )
    with pytest.raises(BenchError, match="attributes 'green'"):
        load_annotations(dataset)


def test_no_file_no_annotations_and_the_extra_split(dataset: CZSLDataset) -> None:
    assert load_annotations(dataset) is None
    samples = convert_official(OFFICIAL, dataset, "official.csv")
    view = with_annotation_split(dataset, samples)
    assert [s.image for s in view.splits[SPLIT]] == [s.image for s in samples]
    attr_ids, obj_ids = view.labels(SPLIT)
    assert attr_ids.tolist() == [0, 0, 1] and obj_ids.tolist() == [0, 0, 1]
    assert view.splits["test"] == dataset.splits["test"] and SPLIT not in dataset.splits
    with pytest.raises(ValueError, match="unknown split"):
        dataset.labels(SPLIT)


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_plan_adds_patterned_images_of_colour_test_pairs() -> None:
    plan = plan_synthetic("synthetic", seed=0)
    test_pairs = set(plan.test_pairs)
    colour_pairs = {(a, o) for a, o in test_pairs if a in COLOURS}
    assert len(plan.higher_order) == 2 * len(PATTERNS) * len(colour_pairs) == 84
    assert len(plan.higher_order_triples()) == 42
    for attr, attr2, obj in plan.higher_order:
        assert (attr, obj) in colour_pairs and attr2 in PATTERNS
    # the splits are those of the preset without higher-order images
    plain = plan_synthetic(dataclasses.replace(plan.preset, aao_per_pattern=0), seed=0)
    assert plain.images == plan.images and not plain.higher_order
    assert not plan_synthetic("synthetic-tiny", seed=0).higher_order
    assert plan_synthetic("synthetic-flat", seed=0).higher_order == plan.higher_order


@pytest.mark.slow
def test_generated_synthetic_has_annotations(synthetic_dataset: CZSLDataset) -> None:
    plan = plan_synthetic("synthetic", seed=0)
    samples = load_annotations(synthetic_dataset)
    assert samples is not None and [s.triple for s in samples] == list(plan.higher_order)
    split_images = {s.image for split in synthetic_dataset.splits.values() for s in split}
    assert not split_images & {s.image for s in samples}, "higher-order images are in no split"
    assert len(synthetic_dataset.splits["test"]) == 192
    from PIL import Image

    with Image.open(synthetic_dataset.root / "images" / samples[0].image) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20  # a patterned, not flat, shape


# ----------------------------------------------------------------------------- download
class _Server:
    def __init__(self, files: dict[str, bytes]) -> None:
        files_ = files

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                data = files_.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture
def server() -> Iterator[_Server]:
    served = _Server({"193-annot.csv": OFFICIAL.encode()})
    served.thread.start()
    yield served
    served.httpd.shutdown()
    served.httpd.server_close()


def test_download_converts_the_official_file(
    server: _Server,
    make_czsl_folder: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from bench.data.download import higher_order

    make_czsl_folder("mit-states", pairs=PAIRS, rows=ROWS)
    real = higher_order.load_card

    def card(kind: str, name: str) -> dict[str, Any]:
        out = real(kind, name)
        if name == "mit-states":
            table = dict(out["higher_order"], sha256=hashlib.sha256(OFFICIAL.encode()).hexdigest())
            out = dict(out, higher_order=table)
        return out

    monkeypatch.setattr(higher_order, "load_card", card)
    assert higher_order_downloads()["aao-mit-states"] == "mit-states"
    monkeypatch.setenv("BENCH_DOWNLOAD_BASE_URL", server.base)
    path = higher_order.download_higher_order("aao-mit-states", tmp_path)
    assert path == tmp_path / "mit-states" / "aao" / "annotations.csv"
    assert path.read_text(encoding="utf-8").count("\n") == 4
    assert (tmp_path / "downloads" / "193-annot.csv").read_bytes() == OFFICIAL.encode()

    with pytest.raises(BenchError, match="unknown higher-order download 'aao-x'"):
        higher_order.download_higher_order("aao-x", tmp_path)


def test_download_checks_the_card_checksum(
    server: _Server, make_czsl_folder: Callable[..., Path], tmp_path: Path
) -> None:
    from bench.data.download.higher_order import download_higher_order

    make_czsl_folder("mit-states", pairs=PAIRS, rows=ROWS)
    with pytest.raises(BenchError, match="sha256"):
        download_higher_order(
            "aao-mit-states", tmp_path, url_override=f"{server.base}/193-annot.csv"
        )
