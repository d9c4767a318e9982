"""Tests for duel.data: class distributions, the two-step sampler, datasets."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from duel.data import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    DatasetNotFoundError,
    ImageDataset,
    ImbalancedStream,
    class_probabilities,
    data_root,
    load_dataset,
    long_tailed_probabilities,
)

# ---------------------------------------------------------------------------
# Class distributions
# ---------------------------------------------------------------------------


def test_class_probabilities_paper_grid() -> None:
    # SPEC section 2: with C = 10 the other classes get these probabilities.
    for p_max, other in [(0.1, 0.1), (0.25, 0.0833), (0.5, 0.0556), (0.75, 0.0278)]:
        probs = class_probabilities(10, p_max)
        assert probs.dtype == torch.float64
        assert probs.shape == (10,)
        assert probs[0] == pytest.approx(p_max)
        assert probs[1:].tolist() == pytest.approx([other] * 9, abs=1e-4)
        assert float(probs.sum()) == pytest.approx(1.0)


def test_class_probabilities_dominant_class() -> None:
    probs = class_probabilities(5, 0.6, dominant_class=3)
    assert int(probs.argmax()) == 3
    assert probs.tolist() == pytest.approx([0.1, 0.1, 0.1, 0.6, 0.1])


@pytest.mark.parametrize("p_max", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_class_probabilities_rejects_bad_p_max(p_max: float) -> None:
    with pytest.raises(
        ValueError, match=r"p_max must be in the open interval \(0, 1\)"
    ):
        class_probabilities(10, p_max)


def test_class_probabilities_error_names_value() -> None:
    with pytest.raises(ValueError, match="got 1.5"):
        class_probabilities(10, 1.5)
    with pytest.raises(ValueError, match="num_classes"):
        class_probabilities(1, 0.5)
    with pytest.raises(ValueError, match="dominant_class .* got 10"):
        class_probabilities(10, 0.5, dominant_class=10)


def test_long_tailed_probabilities() -> None:
    probs = long_tailed_probabilities(10, ratio=100.0)
    assert float(probs.sum()) == pytest.approx(1.0)
    assert float(probs[0] / probs[-1]) == pytest.approx(100.0)
    assert bool((probs[:-1] > probs[1:]).all())
    assert long_tailed_probabilities(4, 1.0).tolist() == pytest.approx([0.25] * 4)
    with pytest.raises(ValueError, match="ratio must be .* >= 1, got 0.5"):
        long_tailed_probabilities(10, 0.5)


# ---------------------------------------------------------------------------
# ImbalancedStream
# ---------------------------------------------------------------------------


def _labels(per_class: list[int]) -> torch.Tensor:
    """Shuffled labels with `per_class[c]` images of class c."""
    labels = torch.cat(
        [torch.full((n,), c, dtype=torch.long) for c, n in enumerate(per_class)]
    )
    return labels[
        torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    ]


def test_stream_yields_indices_of_the_drawn_classes() -> None:
    labels = _labels([30, 20, 10])
    stream = ImbalancedStream(labels, torch.tensor([0.5, 0.5, 0.0]), batch_size=64)
    batch = stream.next_batch()
    assert batch.dtype == torch.int64
    assert batch.shape == (64,)
    assert int(batch.min()) >= 0 and int(batch.max()) < len(labels)
    # Class 2 has probability 0, so none of its images may appear.
    assert not bool((labels[batch] == 2).any())
    assert stream.position == 1


def test_stream_class_frequencies_match_probabilities() -> None:
    labels = _labels([50, 300, 7, 120, 40])
    probs = class_probabilities(5, p_max=0.6, dominant_class=2)
    stream = ImbalancedStream(labels, probs, batch_size=20_000, seed=1)
    drawn = torch.cat([stream.next_batch() for _ in range(10)])  # 200k draws
    frequencies = torch.bincount(labels[drawn], minlength=5).double() / len(drawn)
    assert frequencies.tolist() == pytest.approx(probs.tolist(), abs=0.01)


def test_stream_draws_uniformly_within_a_class() -> None:
    labels = torch.zeros(8, dtype=torch.long)
    stream = ImbalancedStream(labels, torch.tensor([1.0]), batch_size=80_000)
    counts = torch.bincount(stream.next_batch(), minlength=8).double()
    assert (counts / counts.sum()).tolist() == pytest.approx([1 / 8] * 8, abs=0.01)


def test_stream_is_reproducible_from_its_seed() -> None:
    labels = _labels([10, 10, 10])
    probs = torch.tensor([0.2, 0.3, 0.5])
    first = ImbalancedStream(labels, probs, batch_size=16, seed=7)
    second = ImbalancedStream(labels, probs, batch_size=16, seed=7)
    other = ImbalancedStream(labels, probs, batch_size=16, seed=8)
    a, b, c = first.next_batch(), second.next_batch(), other.next_batch()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_stream_resumes_from_state_dict() -> None:
    labels = _labels([10, 25, 5])
    probs = class_probabilities(3, 0.7)
    stream = ImbalancedStream(labels, probs, batch_size=32, seed=3)
    for _ in range(5):
        stream.next_batch()
    state = stream.state_dict()
    assert state["generator"].dtype == torch.uint8
    assert state["position"] == 5
    expected = [stream.next_batch() for _ in range(3)]

    # A fresh stream with another seed, restored, continues identically; the
    # state survives a torch.save round trip, as in a checkpoint.
    restored = ImbalancedStream(labels, probs, batch_size=32, seed=99)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.position == 5
    for batch in expected:
        assert torch.equal(restored.next_batch(), batch)
    assert restored.position == 8


def test_stream_state_dict_is_a_snapshot() -> None:
    stream = ImbalancedStream(_labels([5, 5]), torch.tensor([0.5, 0.5]), 4)
    state = stream.state_dict()
    first = stream.next_batch()
    stream.load_state_dict(state)
    assert torch.equal(stream.next_batch(), first)


def test_stream_rejects_state_of_another_stream() -> None:
    stream = ImbalancedStream(_labels([5, 5]), torch.tensor([0.5, 0.5]), 4)
    other = ImbalancedStream(_labels([5, 5]), torch.tensor([0.5, 0.5]), 8)
    with pytest.raises(ValueError, match="batch_size=8"):
        stream.load_state_dict(other.state_dict())


def test_stream_shards_partition_the_global_batch() -> None:
    labels = _labels([40, 30, 30])
    probs = torch.tensor([0.6, 0.3, 0.1])
    world_size, batch_size = 3, 8
    single = ImbalancedStream(labels, probs, batch_size * world_size, seed=5)
    ranks = [ImbalancedStream(labels, probs, batch_size, seed=5) for _ in range(3)]
    for _ in range(4):
        global_batch = single.next_batch()
        shards = [
            stream.next_batch(rank=rank, world_size=world_size)
            for rank, stream in enumerate(ranks)
        ]
        assert all(shard.shape == (batch_size,) for shard in shards)
        # Row positions never overlap and together give the single-process draw.
        assert torch.equal(torch.cat(shards), global_batch)


def test_stream_iterates_endlessly() -> None:
    stream = ImbalancedStream(_labels([3, 3]), torch.tensor([0.5, 0.5]), 2)
    batches = [batch for _, batch in zip(range(5), stream, strict=False)]
    assert len(batches) == 5
    assert stream.position == 5


def test_stream_never_exposes_labels() -> None:
    labels = _labels([5, 5])
    stream = ImbalancedStream(labels, torch.tensor([0.5, 0.5]), 4)
    assert not any(
        isinstance(value, torch.Tensor) and torch.equal(value, labels)
        for value in vars(stream).values()
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"class_probs": torch.tensor([0.5, 0.5])}, "class_probs must have one entry"),
        ({"class_probs": torch.tensor([0.5, 0.6, -0.1])}, "non-negative"),
        ({"class_probs": torch.tensor([0.5, 0.4, 0.2])}, "must sum to 1"),
        ({"class_probs": torch.tensor([0.5, 0.25, 0.25, 0.0])}, None),
        ({"class_probs": torch.tensor([0.4, 0.2, 0.2, 0.2])}, "class 3 has"),
    ],
)
def test_stream_validation(kwargs: dict, message: str | None) -> None:
    arguments = {
        "labels": _labels([4, 4, 4]),
        "class_probs": torch.tensor([0.5, 0.25, 0.25]),
        "batch_size": 4,
    }
    arguments.update(kwargs)
    if message is None:  # an extra class with probability 0 and no image is fine
        ImbalancedStream(**arguments).next_batch()
        return
    with pytest.raises(ValueError, match=message):
        ImbalancedStream(**arguments)


def test_stream_validates_rank() -> None:
    stream = ImbalancedStream(_labels([4, 4]), torch.tensor([0.5, 0.5]), 4)
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 2\), got 2"):
        stream.next_batch(rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        stream.next_batch(world_size=0)


# ---------------------------------------------------------------------------
# Registry, root and errors
# ---------------------------------------------------------------------------


def test_registry_entries() -> None:
    assert set(DATASETS) == {
        "digits",
        "fashion-mnist",
        "cifar10",
        "stl10",
        "imagenet-lt",
    }
    for info in DATASETS.values():
        assert len(info.mean) == len(info.std) == info.channels
        assert not info.class_names or len(info.class_names) == info.num_classes


def test_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DUEL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data_root() == tmp_path / "data"
    monkeypatch.setenv("DUEL_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*cifar10"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match=r"unknown split 'val'.*\['train', 'test'\]"):
        load_dataset("digits", "val")


@pytest.mark.parametrize(
    ("name", "folder", "hint"),
    [
        ("cifar10", "cifar-10-batches-py", "download=True"),
        ("stl10", "stl10_binary", "download=True"),
        ("imagenet-lt", "imagenet-lt", "ImageNet_LT_train.txt"),
    ],
)
def test_missing_dataset_message(
    tmp_path: Path, name: str, folder: str, hint: str
) -> None:
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset(name, root=tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert repr(name) in message
    assert str(tmp_path / folder) in message
    assert hint in message
    assert "DUEL_DATA" in message
    assert caught.value.__cause__ is None


def test_missing_fashion_mnist_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("duel.data.DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("fashion-mnist", root=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert str(tmp_path / "no-debian") in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_failed_download_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.CIFAR10.download", refuse)
    with pytest.raises(DatasetNotFoundError, match="download failed.*unreachable"):
        load_dataset("cifar10", root=tmp_path, download=True)


# ---------------------------------------------------------------------------
# Loading each format from tiny files written in the real on-disk layout
# ---------------------------------------------------------------------------


def test_digits() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert len(test) == 360  # indices 0, 5, 10, ...
    assert train.images.shape[1:] == (1, 8, 8)
    assert train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255
    assert train.num_classes == 10
    assert set(train.labels.tolist()) == set(range(10))


class _Py2Str(bytes):
    """A Python 2 ``str``, the type of the keys and names in the real CIFAR files.

    The CIFAR-10 batches were pickled by Python 2. Python 3 reads its strings as
    bytes with ``encoding="bytes"`` (hence ``b"data"`` in the CIFAR page's
    recipe) and as str with ``encoding="latin1"``, which torchvision uses; a
    Python 3 ``bytes`` key would stay bytes either way, so the tests write the
    Python 2 opcode.
    """


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler can be extended
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: _Py2Str) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + bytes(obj))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + bytes(obj))

    dispatch[_Py2Str] = _save_py2_str


def _write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        _Py2Pickler(out, protocol=2).dump(obj)


def _write_cifar10(root: Path) -> None:
    """Five train batches of 2 images and a test batch of 3, real format."""
    folder = root / "cifar-10-batches-py"
    names = [_Py2Str(f"class{i}".encode()) for i in range(10)]
    _write_pickle(folder / "batches.meta", {_Py2Str(b"label_names"): names})
    for batch, count in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [
        ("test_batch", 3)
    ]:
        # Rows are 3072 bytes: 1024 red, 1024 green, 1024 blue, row-major 32x32.
        # Image k of a batch has value 10 + k everywhere but one marked pixel:
        # channel 1 (green), row 5, column 7 holds 200 + k.
        data = np.zeros((count, 3072), dtype=np.uint8)
        for k in range(count):
            data[k] = 10 + k
            data[k, 1024 + 5 * 32 + 7] = 200 + k
        labels = [(k + 3) % 10 for k in range(count)]
        _write_pickle(
            folder / batch, {_Py2Str(b"data"): data, _Py2Str(b"labels"): labels}
        )


def test_cifar10_tiny_files(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as infile:
        assert set(pickle.load(infile, encoding="bytes")) == {b"data", b"labels"}
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert isinstance(train, ImageDataset)
    assert train.images.shape == (10, 3, 32, 32)
    assert test.images.shape == (3, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert test.labels.tolist() == [3, 4, 5]
    assert train.labels.tolist() == [3, 4] * 5
    assert train.class_names == [f"class{i}" for i in range(10)]
    for k in range(3):
        assert int(test.images[k, 1, 5, 7]) == 200 + k
        assert int(test.images[k, 1, 7, 5]) == 10 + k  # not transposed
        assert int(test.images[k, 0, 5, 7]) == 10 + k  # not in another channel
    assert test.split == "test"


def _write_stl10(root: Path, split: str, labels_on_disk: list[int]) -> None:
    """STL-10 binaries: images 3x96x96 column-major, labels 1-based uint8."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    count = len(labels_on_disk)
    images = np.zeros((count, 3, 96, 96), dtype=np.uint8)  # (N, C, row, column)
    for k in range(count):
        images[k] = k
        images[k, 2, 10, 40] = 100 + k  # blue, row 10, column 40
    # Column-major within each channel: the file stores (N, C, column, row).
    images.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
    np.asarray(labels_on_disk, dtype=np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text(
        "\n".join(f"stl{i}" for i in range(10)) + "\n"
    )


def test_stl10_tiny_files(tmp_path: Path) -> None:
    _write_stl10(tmp_path, "train", [1, 10, 5])
    _write_stl10(tmp_path, "test", [2, 2])
    train = load_dataset("stl10", "train", root=tmp_path)
    assert train.images.shape == (3, 3, 96, 96)
    assert train.labels.tolist() == [0, 9, 4]  # 1-based on disk, 0-based here
    assert train.class_names == [f"stl{i}" for i in range(10)]
    for k in range(3):
        assert int(train.images[k, 2, 10, 40]) == 100 + k
        assert int(train.images[k, 2, 40, 10]) == k
    test = load_dataset("stl10", "test", root=tmp_path)
    assert test.labels.tolist() == [1, 1]


def _write_imagenet_lt(root: Path) -> list[tuple[str, int, tuple[int, int, int]]]:
    folder = root / "imagenet-lt"
    entries = [
        ("train/n01440764/n01440764_1.JPEG", 0, (255, 0, 0)),
        ("train/n01440764/n01440764_2.JPEG", 0, (0, 255, 0)),
        ("train/n01443537/n01443537_1.png", 1, (0, 0, 255)),
        ("train/n15075141/n15075141_1.JPEG", 999, (255, 255, 255)),
    ]
    for relative, _, color in entries:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        # Non-square and not 64x64, so loading must resize; grayscale JPEG
        # ("L") for one entry checks the RGB conversion.
        mode = "L" if color == (255, 255, 255) else "RGB"
        image = Image.new(mode, (80, 50), color[0] if mode == "L" else color)
        image.save(path, format="PNG" if relative.endswith(".png") else "JPEG")
    (folder / "ImageNet_LT_train.txt").write_text(
        "".join(f"{relative} {label}\n" for relative, label, _ in entries)
    )
    return entries


def test_imagenet_lt_tiny_files_and_cache(tmp_path: Path) -> None:
    entries = _write_imagenet_lt(tmp_path)
    dataset = load_dataset("imagenet-lt", "train", root=tmp_path)
    assert dataset.images.shape == (4, 3, 64, 64)
    assert dataset.labels.tolist() == [0, 0, 1, 999]
    assert dataset.num_classes == 1000
    assert dataset.class_names[0] == "n01440764"
    assert dataset.class_names[999] == "n15075141"
    for k, (_, _, color) in enumerate(entries):
        center = dataset.images[k, :, 32, 32].tolist()
        assert center == pytest.approx(list(color), abs=3)  # JPEG is lossy

    cache = tmp_path / "imagenet-lt" / "ImageNet_LT_train_64px.pt"
    assert cache.is_file()
    assert not list(cache.parent.glob(".*"))  # no temporary file left behind

    # The second load comes from the cache, even with an image gone.
    (tmp_path / "imagenet-lt" / entries[0][0]).unlink()
    cached = load_dataset("imagenet-lt", "train", root=tmp_path)
    assert torch.equal(cached.images, dataset.images)
    assert cached.class_names == dataset.class_names


def test_imagenet_lt_missing_image(tmp_path: Path) -> None:
    entries = _write_imagenet_lt(tmp_path)
    missing = tmp_path / "imagenet-lt" / entries[2][0]
    missing.unlink()
    with pytest.raises(DatasetNotFoundError, match="1 of 4 images") as caught:
        load_dataset("imagenet-lt", root=tmp_path)
    assert str(missing) in str(caught.value)


def test_imagenet_lt_bad_list_line(tmp_path: Path) -> None:
    folder = tmp_path / "imagenet-lt"
    folder.mkdir()
    (folder / "ImageNet_LT_test.txt").write_text("val/n0/x.JPEG 1000\n")
    with pytest.raises(ValueError, match=r"label must be in \[0, 1000\), got 1000"):
        load_dataset("imagenet-lt", "test", root=tmp_path)


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed at {DEBIAN_FASHION_MNIST} "
    "(apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUEL_DATA", str(tmp_path))
    train = load_dataset("fashion-mnist", "train")
    assert train.images.shape == (60000, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    assert train.num_classes == 10 and len(train.class_names) == 10
    assert set(train.labels.tolist()) == set(range(10))
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    # Measured statistics agree with the registry's.
    mean = train.images.float().mean() / 255
    assert float(mean) == pytest.approx(DATASETS["fashion-mnist"].mean[0], abs=1e-3)
