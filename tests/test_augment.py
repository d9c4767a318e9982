"""Tests for duel.augment: batched augmentations with per-sample parameters."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from duel.augment import AUGMENTATIONS, Augmentation, build_augmentation

RGB_STATS = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
GRAY_STATS = {"mean": (0.3,), "std": (0.35,)}


def _images(channels: int = 3, size: int = 32, batch: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(
        0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=generator
    )


def _normalise(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    mean_ = torch.tensor(mean).view(1, -1, 1, 1)
    std_ = torch.tensor(std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean_) / std_


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", AUGMENTATIONS)
@pytest.mark.parametrize(("channels", "stats"), [(3, RGB_STATS), (1, GRAY_STATS)])
def test_shapes_and_dtypes(name: str, channels: int, stats: dict) -> None:
    augmentation = build_augmentation(name, image_size=24, **stats)
    for images in (_images(channels), _images(channels).float() / 255):
        out = augmentation(images, _generator(0))
        assert out.shape == (16, channels, 24, 24)
        assert out.dtype == torch.float32
        assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", ["paper", "simclr"])
def test_same_seed_same_output_other_seed_other_output(name: str) -> None:
    augmentation = build_augmentation(name, image_size=32, crop=True, **RGB_STATS)
    images = _images()
    first = augmentation(images, _generator(7))
    again = augmentation(images, _generator(7))
    other = augmentation(images, _generator(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_generator_state_advances_and_resumes() -> None:
    augmentation = build_augmentation("simclr", image_size=32, **RGB_STATS)
    images = _images()
    generator = _generator(3)
    augmentation(images, generator)
    state = generator.get_state()
    second = augmentation(images, generator)
    generator.set_state(state)
    assert torch.equal(augmentation(images, generator), second)


def test_none_is_normalisation_only() -> None:
    augmentation = build_augmentation("none", image_size=32, **RGB_STATS)
    images = _images()
    expected = _normalise(images, **RGB_STATS)
    torch.testing.assert_close(augmentation(images), expected)


def test_none_resizes() -> None:
    augmentation = build_augmentation("none", image_size=16, **GRAY_STATS)
    constant = torch.full((2, 1, 8, 8), 51, dtype=torch.uint8)  # 51 / 255 = 0.2
    out = augmentation(constant)
    assert out.shape == (2, 1, 16, 16)
    torch.testing.assert_close(out, torch.full_like(out, (0.2 - 0.3) / 0.35))


def test_flip_with_probability_one_is_torch_flip() -> None:
    augmentation = Augmentation("flip", 32, **RGB_STATS, flip_p=1.0)
    images = _images()
    expected = _normalise(images, **RGB_STATS).flip(-1)
    assert torch.equal(augmentation(images, _generator(0)), expected)


def test_flip_is_per_sample() -> None:
    augmentation = Augmentation("flip", 32, **GRAY_STATS, flip_p=0.5)
    images = _images(channels=1, batch=64)
    out = augmentation(images, _generator(0))
    plain = _normalise(images, **GRAY_STATS)
    flipped = [torch.equal(out[i], plain[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(out[i], plain[i]) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48


@pytest.mark.parametrize(("channels", "size"), [(3, 32), (1, 28), (3, 20)])
def test_full_crop_is_identity_up_to_interpolation(channels: int, size: int) -> None:
    stats = RGB_STATS if channels == 3 else GRAY_STATS
    augmentation = Augmentation("crop", size, **stats, crop=True, crop_scale=(1, 1))
    images = _images(channels, size)
    out = augmentation(images, _generator(0))
    torch.testing.assert_close(out, _normalise(images, **stats), atol=1e-4, rtol=0)


def test_crop_boxes_differ_within_a_batch() -> None:
    augmentation = Augmentation("crop", 32, **RGB_STATS, crop=True)
    # The same image 16 times: any difference between outputs is the crop's.
    images = _images(batch=1).expand(16, -1, -1, -1)
    out = augmentation(images, _generator(0))
    distinct = {tuple(view.flatten()[:64].tolist()) for view in out}
    assert len(distinct) == 16


def test_crop_samples_inside_the_image_without_rotation() -> None:
    # A horizontal ramp stays a horizontal ramp under any crop and resize.
    augmentation = Augmentation("crop", 16, (0.0,), (1.0,), crop=True)
    ramp = torch.linspace(0, 1, 64).expand(8, 1, 64, 64).contiguous()
    out = augmentation(ramp, _generator(0))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # Each row of a view is the same ramp, increasing left to right.
    assert bool((out[:, :, :, 1:] >= out[:, :, :, :-1]).all())
    torch.testing.assert_close(out[:, :, :1].expand_as(out), out)


def test_jitter_parameters_differ_within_a_batch() -> None:
    augmentation = Augmentation(
        "jitter", 8, **RGB_STATS, color_p=1.0, jitter_p=1.0, brightness=0.4
    )
    # One mid-gray colour repeated: brightness scales it by a per-image factor.
    images = torch.full((32, 3, 8, 8), 0.5)
    out = augmentation(images, _generator(0))
    assert len({round(float(view[0, 0, 0]), 6) for view in out}) == 32


def test_jitter_matches_torchvision_functional() -> None:
    # Brightness, contrast, saturation and hue drawn per image, checked against
    # torchvision's functional ops applied image by image with the same factors.
    augmentation = Augmentation(
        "jitter",
        16,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        color_p=1.0,
        jitter_p=1.0,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
    )
    images = torch.rand(6, 3, 16, 16, generator=_generator(5))
    params = augmentation._draw(6, 16, 16, _generator(9))
    out = augmentation(images, _generator(9))
    for i in range(6):
        expected = TF.adjust_brightness(images[i], float(params["brightness"][i]))
        expected = TF.adjust_contrast(expected, float(params["contrast"][i]))
        expected = TF.adjust_saturation(expected, float(params["saturation"][i]))
        expected = TF.adjust_hue(expected, float(params["hue"][i]))
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)


def test_brightness_and_contrast_apply_to_one_channel() -> None:
    augmentation = Augmentation(
        "jitter", 8, **GRAY_STATS, color_p=1.0, jitter_p=1.0, brightness=0.4
    )
    images = _images(channels=1, size=8)
    out = augmentation(images, _generator(0))
    assert not torch.allclose(out, _normalise(images, **GRAY_STATS))


def test_grayscale_output_has_equal_channels() -> None:
    augmentation = Augmentation(
        "gray", 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), color_p=1.0, grayscale_p=1.0
    )
    out = augmentation(_images(), _generator(0))
    assert torch.equal(out[:, 0], out[:, 1])
    assert torch.equal(out[:, 1], out[:, 2])


def test_paper_recipe_distorts_about_half_and_flips_three_quarters() -> None:
    augmentation = build_augmentation("paper", image_size=8, **RGB_STATS)
    images = _images(size=8, batch=400)
    params = augmentation._draw(400, 8, 8, _generator(0))
    assert float(params["flip"].float().mean()) == pytest.approx(0.75, abs=0.07)
    assert float(params["jitter"].float().mean()) == pytest.approx(0.5, abs=0.07)
    # Grayscale only ever happens inside the colour distortion.
    assert not bool((params["grayscale"] & ~params["jitter"]).any())
    assert augmentation(images, _generator(0)).shape == (400, 3, 8, 8)


def test_describe_is_json_and_complete() -> None:
    augmentation = build_augmentation("simclr", image_size=32, **RGB_STATS)
    description = json.loads(json.dumps(augmentation.describe()))
    assert description["name"] == "simclr"
    assert description["crop"] is True
    assert description["crop_scale"] == [0.2, 1.0]
    assert description["mean"] == list(RGB_STATS["mean"])
    for key in ("flip_p", "color_p", "jitter_p", "grayscale_p", "hue", "image_size"):
        assert key in description
    assert (
        build_augmentation("paper", image_size=28, **GRAY_STATS).describe()["crop"]
        is False
    )
    assert build_augmentation(
        "paper", image_size=28, crop=True, **GRAY_STATS
    ).describe()["crop"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_drives_cuda_images() -> None:
    augmentation = build_augmentation("simclr", image_size=32, **RGB_STATS)
    images = _images()
    reference = augmentation(images, _generator(4))
    on_gpu = augmentation(images.cuda(), _generator(4))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), reference, atol=1e-4, rtol=0)


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown augmentation 'autoaugment'.*paper"):
        build_augmentation("autoaugment", image_size=32, **RGB_STATS)
    with pytest.raises(ValueError, match="crop=True"):
        build_augmentation("none", image_size=32, crop=True, **RGB_STATS)
    with pytest.raises(ValueError, match="image_size must be an integer >= 1, got 0"):
        build_augmentation("none", image_size=0, **RGB_STATS)
    with pytest.raises(ValueError, match="std must be positive"):
        build_augmentation("none", image_size=8, mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match="same length"):
        build_augmentation("none", image_size=8, mean=(0.5, 0.5), std=(0.2,))
    with pytest.raises(ValueError, match=r"flip_p must be in \[0, 1\], got 1.5"):
        Augmentation("x", 8, (0.5,), (0.2,), flip_p=1.5)
    with pytest.raises(ValueError, match="crop_scale"):
        Augmentation("x", 8, (0.5,), (0.2,), crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="hue"):
        Augmentation("x", 8, (0.5,), (0.2,), hue=0.6)

    augmentation = build_augmentation("simclr", image_size=8, **RGB_STATS)
    with pytest.raises(ValueError, match="images have 1 channels but mean/std have 3"):
        augmentation(_images(channels=1, size=8))
    with pytest.raises(ValueError, match=r"shape \(B, C, H, W\)"):
        augmentation(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="uint8 or floating point"):
        augmentation(torch.zeros(2, 3, 8, 8, dtype=torch.int32))
