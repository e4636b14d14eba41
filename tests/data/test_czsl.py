"""The standard-format loader: every rule on hand-made folders, and the registry."""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data.czsl import CZSLDataset, Sample, describe, load_dataset, read_pair_file
from bench.data.registry import (
    REAL_DATASETS,
    default_data_root,
    expand_dataset_names,
    open_dataset,
    resolve_dataset,
)
from bench.data.verify import compare_counts, verify_dataset
from bench.errors import BenchError


class Custom:
    """A class that a weights_only unpickler must refuse."""

    def __init__(self) -> None:
        self.payload = "x"


def one_line_error(excinfo: pytest.ExceptionInfo[BenchError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.fixture
def handmade(make_czsl_folder) -> CZSLDataset:
    return load_dataset(make_czsl_folder())


# ----------------------------------------------------------------------- vocabulary, pairs


def test_vocabulary_is_sorted_unique_over_the_three_pair_files(handmade: CZSLDataset) -> None:
    assert handmade.attrs == ("Faux.Fur", "blue", "red")
    assert handmade.objs == ("circle", "square", "traffic_light")


def test_closed_world_is_the_sorted_union(handmade: CZSLDataset) -> None:
    assert handmade.pairs == (
        ("Faux.Fur", "square"),
        ("Faux.Fur", "traffic_light"),
        ("blue", "circle"),
        ("blue", "square"),
        ("red", "circle"),
        ("red", "square"),
    )


def test_split_pairs_keep_file_order_without_duplicates_or_blank_lines(
    handmade: CZSLDataset,
) -> None:
    assert handmade.train_pairs == (
        ("red", "circle"),
        ("blue", "square"),
        ("Faux.Fur", "traffic_light"),
    )
    assert handmade.val_pairs == (("blue", "square"), ("red", "square"))
    assert handmade.test_pairs == (("blue", "circle"), ("red", "circle"), ("Faux.Fur", "square"))
    assert handmade.split_pairs("val") == handmade.val_pairs
    with pytest.raises(ValueError):
        handmade.split_pairs("dev")


def test_open_world_is_attribute_major(handmade: CZSLDataset) -> None:
    expected = tuple((a, o) for a in handmade.attrs for o in handmade.objs)
    assert handmade.open_world_pairs() == expected
    ids = handmade.candidate_pairs("open")
    assert ids.dtype == np.int64 and ids.shape == (9, 2)
    assert [(handmade.attrs[a], handmade.objs[o]) for a, o in ids] == list(expected)


def test_candidate_pairs_closed_are_ids_of_the_closed_world(handmade: CZSLDataset) -> None:
    ids = handmade.candidate_pairs("closed")
    assert ids.dtype == np.int64 and ids.shape == (6, 2)
    assert [(handmade.attrs[a], handmade.objs[o]) for a, o in ids] == list(handmade.pairs)
    with pytest.raises(ValueError):
        handmade.candidate_pairs("half")


def test_candidate_mask(handmade: CZSLDataset) -> None:
    def allowed(split: str) -> set[tuple[str, str]]:
        mask = handmade.candidate_mask(split, "closed")
        assert mask is not None and mask.dtype == bool and mask.shape == (6,)
        return {pair for pair, keep in zip(handmade.pairs, mask, strict=True) if keep}

    train = set(handmade.train_pairs)
    assert allowed("train") == train
    assert allowed("val") == train | {("red", "square")}
    assert allowed("test") == train | {("blue", "circle"), ("Faux.Fur", "square")}
    assert handmade.candidate_mask("test", "open") is None


def test_seen_pair_ids_and_id_maps(handmade: CZSLDataset) -> None:
    assert dict(handmade.attr_to_id) == {"Faux.Fur": 0, "blue": 1, "red": 2}
    assert dict(handmade.obj_to_id) == {"circle": 0, "square": 1, "traffic_light": 2}
    assert handmade.seen_pairs_ids().tolist() == [[2, 0], [1, 1], [0, 2]]
    assert handmade.seen_pairs_ids().dtype == np.int64


# --------------------------------------------------------------------------------- samples


def test_skipped_rows_and_no_filtering_by_the_split_pair_file(handmade: CZSLDataset) -> None:
    images = {
        split: [s.image for s in handmade.splits[split]] for split in ("train", "val", "test")
    }
    assert images["train"] == [
        "red_circle/0.jpg",
        "red_circle/1.jpg",
        "blue_square/2.jpg",
        "Faux.Fur_traffic_light/3.jpg",
        "red_square/4.jpg",  # closed-world pair not in train_pairs.txt: kept
    ]  # attr NA, set NA and the non-closed (blue, traffic_light) rows are skipped
    assert images["val"] == ["blue_square/8.jpg", "red_square/9.jpg", "blue_circle/10.jpg"]
    assert images["test"] == ["blue_circle/11.jpg", "red_circle/12.jpg", "Faux.Fur_square/13.jpg"]
    assert handmade.splits["train"][3] == Sample(
        "Faux.Fur_traffic_light/3.jpg", "Faux.Fur", "traffic_light"
    )


def test_labels_are_int64_ids_in_sample_order(handmade: CZSLDataset) -> None:
    attr_ids, obj_ids = handmade.labels("val")
    assert attr_ids.dtype == np.int64 and obj_ids.dtype == np.int64
    assert attr_ids.tolist() == [1, 2, 1]
    assert obj_ids.tolist() == [1, 1, 0]


def test_describe_counts(handmade: CZSLDataset) -> None:
    assert describe(handmade) == {
        "attrs": 3,
        "objs": 3,
        "pairs": 6,
        "open_world_pairs": 9,
        "train": {"images": 5, "seen_pairs": 3, "unseen_pairs": 0},
        "val": {"images": 3, "seen_pairs": 1, "unseen_pairs": 1},
        "test": {"images": 3, "seen_pairs": 1, "unseen_pairs": 2},
    }


def test_flat_layout_and_image_paths(make_czsl_folder) -> None:
    rows = [
        {"image": "100.jpg", "attr": "wet", "obj": "dog", "set": "train"},
        {"image": "101.jpg", "attr": "dry", "obj": "cat", "set": "train"},
        {"image": "102.jpg", "attr": "wet", "obj": "cat", "set": "val"},
        {"image": "103.jpg", "attr": "dry", "obj": "dog", "set": "test"},
    ]
    pairs = {"train": ["wet dog", "dry cat"], "val": ["wet cat"], "test": ["dry dog"]}
    ds = load_dataset(make_czsl_folder("flat", pairs=pairs, rows=rows))
    assert ds.name == "flat"
    sample = ds.splits["val"][0]
    assert sample.image == "102.jpg"
    assert ds.image_path(sample) == ds.root / "images" / "102.jpg"
    assert ds.image_path(sample).is_file()


def test_ut_style_rows_with_extra_keys_load(make_czsl_folder, czsl_defaults) -> None:
    pairs, rows = copy.deepcopy(czsl_defaults)
    for row in rows:
        row["_image"] = f"Shoes/{row['obj']}/{row['image']}"
    ds = load_dataset(make_czsl_folder(pairs=pairs, rows=rows))
    assert len(ds.splits["train"]) == 5


def test_legacy_torch_serialization_loads(make_czsl_folder, czsl_defaults) -> None:
    """The original split archives were written by old torch versions (non-zip format)."""
    _, rows = czsl_defaults
    buffer = io.BytesIO()
    torch.save(rows, buffer, _use_new_zipfile_serialization=False)
    ds = load_dataset(make_czsl_folder(metadata=buffer.getvalue()))
    assert describe(ds)["train"]["images"] == 5


def test_loading_does_not_open_images(make_czsl_folder) -> None:
    ds = load_dataset(make_czsl_folder(images=False))
    assert len(ds.splits["test"]) == 3


def test_fingerprint_is_stable_and_tracks_content(make_czsl_folder, czsl_defaults) -> None:
    folder = make_czsl_folder()
    first, second = load_dataset(folder), load_dataset(folder)
    assert first.fingerprint == second.fingerprint and len(first.fingerprint) == 64
    assert first == second and hash(first) == hash(second)
    pairs, rows = copy.deepcopy(czsl_defaults)
    rows[0]["image"] = "red_circle/renamed.jpg"
    assert (
        load_dataset(make_czsl_folder("other", pairs=pairs, rows=rows)).fingerprint
        != first.fingerprint
    )
    pairs, rows = copy.deepcopy(czsl_defaults)
    pairs["val"] = ["red square", "blue square"]  # same pairs, other order
    assert (
        load_dataset(make_czsl_folder("third", pairs=pairs, rows=rows)).fingerprint
        != first.fingerprint
    )


# ---------------------------------------------------------------------------------- errors


def test_metadata_is_loaded_weights_only(make_czsl_folder) -> None:
    folder = make_czsl_folder(metadata=[Custom()])
    with pytest.raises(BenchError) as excinfo:
        load_dataset(folder)
    assert "metadata_compositional-split-natural.t7" in one_line_error(excinfo)
    raw = pickle.dumps(
        [{"image": "a", "attr": "red", "obj": "circle", "set": "train", "x": Custom()}]
    )
    with pytest.raises(BenchError, match="cannot be loaded safely"):
        load_dataset(make_czsl_folder("raw", metadata=raw))


@pytest.mark.parametrize(
    "metadata, fragment",
    [
        ({"rows": []}, "not a list of dicts"),
        ([["image", "attr"]], "row 0"),
        ([{"image": "a.jpg", "attr": "red", "obj": "circle"}], "row 0"),
        ([{"image": 3, "attr": "red", "obj": "circle", "set": "train"}], "row 0"),
        (b"not a torch file", "cannot be loaded safely"),
    ],
)
def test_malformed_metadata(make_czsl_folder, metadata, fragment: str) -> None:
    folder = make_czsl_folder(metadata=metadata, images=False)
    with pytest.raises(BenchError, match=fragment) as excinfo:
        load_dataset(folder)
    assert str(folder / "metadata_compositional-split-natural.t7") in one_line_error(excinfo)


def test_malformed_pair_line_names_file_and_line(make_czsl_folder, czsl_defaults) -> None:
    pairs, _ = copy.deepcopy(czsl_defaults)
    pairs["test"] = ["blue circle", "red circle extra"]
    folder = make_czsl_folder(pairs=pairs)
    with pytest.raises(BenchError) as excinfo:
        load_dataset(folder)
    assert f"{folder / 'compositional-split-natural' / 'test_pairs.txt'}:2:" in one_line_error(
        excinfo
    )


def test_missing_folder_split_dir_pair_file_and_metadata(make_czsl_folder, tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "bare").mkdir()
    with pytest.raises(BenchError, match="compositional-split-natural"):
        load_dataset(tmp_path / "bare")
    folder = make_czsl_folder("nopairs", skip_pair_files=["val"])
    with pytest.raises(BenchError, match="val_pairs.txt") as excinfo:
        load_dataset(folder)
    assert "missing pair file" in one_line_error(excinfo)
    folder = make_czsl_folder("nometa", metadata=None)
    with pytest.raises(BenchError, match="missing metadata file") as excinfo:
        load_dataset(folder)
    assert "metadata_compositional-split-natural.t7" in one_line_error(excinfo)


def test_primitive_without_training_image(make_czsl_folder, czsl_defaults) -> None:
    pairs, rows = copy.deepcopy(czsl_defaults)
    pairs["test"].append("green circle")
    rows.append({"image": "green_circle/x.jpg", "attr": "green", "obj": "circle", "set": "test"})
    with pytest.raises(BenchError, match="attribute 'green'") as excinfo:
        load_dataset(make_czsl_folder("attr", pairs=pairs, rows=rows))
    assert "test_pairs.txt" in one_line_error(excinfo)

    pairs, rows = copy.deepcopy(czsl_defaults)
    pairs["val"].append("red hat")
    with pytest.raises(BenchError, match="object 'hat'") as excinfo:
        load_dataset(make_czsl_folder("obj", pairs=pairs, rows=rows))
    assert "val_pairs.txt" in one_line_error(excinfo)


def test_empty_split(make_czsl_folder, czsl_defaults) -> None:
    pairs, rows = copy.deepcopy(czsl_defaults)
    rows = [row for row in rows if row["set"] != "val"]
    with pytest.raises(BenchError, match="'val'") as excinfo:
        load_dataset(make_czsl_folder("noval", pairs=pairs, rows=rows))
    assert "metadata_compositional-split-natural.t7" in one_line_error(excinfo)
    pairs, rows = copy.deepcopy(czsl_defaults)
    pairs["test"] = ["", "  "]
    with pytest.raises(BenchError, match="holds no pairs"):
        load_dataset(make_czsl_folder("notest", pairs=pairs, rows=rows))


def test_read_pair_file_accepts_any_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text("a\tb\n  c   d  \r\n\na b\n", encoding="utf-8")
    assert read_pair_file(path) == (("a", "b"), ("c", "d"))


# -------------------------------------------------------------------------------- registry


def test_default_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    assert default_data_root() == Path("data")
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path


def test_expand_dataset_names(tmp_path: Path) -> None:
    assert expand_dataset_names("all") == list(REAL_DATASETS)
    assert expand_dataset_names("ut-zappos, synthetic,ut-zappos,") == ["ut-zappos", "synthetic"]
    assert expand_dataset_names(f"synthetic,{tmp_path}") == ["synthetic", str(tmp_path)]
    assert expand_dataset_names("cgqa,all") == ["cgqa", "mit-states", "ut-zappos"]
    with pytest.raises(BenchError, match="unknown dataset 'mit-state'"):
        expand_dataset_names("mit-state")
    with pytest.raises(BenchError, match="no dataset"):
        expand_dataset_names(" , ")
    with pytest.raises(BenchError, match="does not exist"):
        expand_dataset_names(str(tmp_path / "missing"))


def test_resolve_real_missing_says_download(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as excinfo:
        resolve_dataset("mit-states", tmp_path)
    assert f"bench data download mit-states --root {tmp_path}" in one_line_error(excinfo)


def test_resolve_unknown_and_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="unknown dataset 'imagenet'"):
        resolve_dataset("imagenet", tmp_path)
    with pytest.raises(BenchError, match="does not exist"):
        resolve_dataset(str(tmp_path / "nope"), tmp_path)
    with pytest.raises(BenchError, match="not in the standard"):
        resolve_dataset(tmp_path, tmp_path)


def test_resolve_synthetic_prepares_only_when_asked(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as excinfo:
        resolve_dataset("synthetic-tiny", tmp_path)
    assert "bench data prepare synthetic-tiny" in one_line_error(excinfo)
    folder = resolve_dataset("synthetic-tiny", tmp_path, prepare=True)
    assert folder == tmp_path / "synthetic-tiny"
    assert resolve_dataset("synthetic-tiny", tmp_path) == folder
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic-tiny"]  # no temp leftovers


def test_open_dataset_names(tiny_root: Path) -> None:
    by_name = open_dataset("synthetic-tiny", tiny_root)
    assert by_name.name == "synthetic-tiny"
    by_path = open_dataset(tiny_root / "synthetic-tiny")
    assert by_path.name == "synthetic-tiny"
    assert by_path.fingerprint == by_name.fingerprint


# ---------------------------------------------------------------------------------- verify


def test_verify_clean_registered_dataset(tiny_root: Path) -> None:
    report = verify_dataset("synthetic-tiny", tiny_root, progress=False)
    assert report.ok, report.summary()
    assert report.expected is not None and not report.mismatches
    assert report.images_checked == 136
    assert report.summary()[-1] == "OK"


def test_verify_reports_missing_and_unreadable(make_czsl_folder) -> None:
    folder = make_czsl_folder()
    (folder / "images" / "red_circle" / "0.jpg").unlink()
    (folder / "images" / "blue_circle" / "11.jpg").write_bytes(b"not an image")
    report = verify_dataset(folder, progress=False)
    assert not report.ok
    assert report.expected is None
    assert report.missing == ("red_circle/0.jpg",)
    assert len(report.unreadable) == 1 and report.unreadable[0].startswith("blue_circle/11.jpg: ")
    assert report.images_checked == 11
    assert report.summary()[-1] == "FAILED"


def test_compare_counts() -> None:
    card = {
        "attrs": 3,
        "open_world_pairs": 9,
        "train": {"pairs": 3, "seen_pairs": 3, "images": 6},
        "val": {"unseen_pairs": 1},
    }
    found = {
        "attrs": 3,
        "objs": 3,
        "open_world_pairs": 9,
        "train": {"images": 5, "seen_pairs": 3, "unseen_pairs": 0},
        "val": {"images": 3, "seen_pairs": 1, "unseen_pairs": 1},
    }
    assert compare_counts(card, found) == ["train.images: card says 6, found 5"]
    assert compare_counts({"attrs": 4}, found) == ["attrs: card says 4, found 3"]


def test_real_cards_counts_have_the_describe_shape() -> None:
    from bench.data.registry import dataset_card

    for name in REAL_DATASETS:
        counts = dataset_card(name)["counts"]
        assert set(counts) == {"attrs", "objs", "open_world_pairs", "train", "val", "test"}
        assert counts["open_world_pairs"] == counts["attrs"] * counts["objs"]
        for split in ("val", "test"):
            assert set(counts[split]) == {"seen_pairs", "unseen_pairs", "images"}
        # the values, not just the keys: positive counts, training on seen pairs only
        train = counts["train"]
        assert set(train) == {"pairs", "seen_pairs", "unseen_pairs", "images"}
        assert train["pairs"] == train["seen_pairs"] and train["unseen_pairs"] == 0, name
        numbers = [counts["attrs"], counts["objs"], train["pairs"], train["images"]]
        numbers += [counts[split][key] for split in ("val", "test") for key in counts[split]]
        assert all(isinstance(n, int) and n > 0 for n in numbers), (name, numbers)
        assert train["pairs"] <= counts["open_world_pairs"], name


def test_dataset_pickles(handmade: CZSLDataset) -> None:
    assert handmade.attr_to_id["red"] == 2  # populate the cached property first
    clone = pickle.loads(pickle.dumps(handmade))
    assert clone == handmade and clone.fingerprint == handmade.fingerprint
    assert clone.labels("test")[0].tolist() == handmade.labels("test")[0].tolist()
    assert copy.deepcopy(handmade) == handmade


def test_dataset_is_frozen(handmade: CZSLDataset) -> None:
    with pytest.raises(AttributeError):
        handmade.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        handmade.splits["train"] = ()  # type: ignore[index]
    assert isinstance(torch.tensor(handmade.labels("train")[0]), torch.Tensor)
