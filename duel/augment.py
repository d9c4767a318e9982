"""Batched image augmentations with per-sample random parameters.

Self-supervised methods see two augmented views of every image. Augmenting a
batch image by image with PIL is the usual bottleneck of small-image training,
so every transform here works on a whole batch ``(B, C, H, W)`` with tensor
ops, on whatever device the images are on. Each image still gets its own
random parameters (crop box, flip, jitter factors), all drawn from one
``torch.Generator``: the same generator state gives bit-identical views, which
is what makes a training run resumable.

Three recipes (:data:`AUGMENTATIONS`):

* ``paper``: Appendix E of the paper as printed, colour distortion with
  probability 0.5 and horizontal flip with probability 0.75. The appendix names
  "colour jittering and grayscale" inside the colour distortion, after SimCLR;
  we read it as SimCLR's colour distortion (jitter strength 0.5, i.e. factors
  0.4 / 0.4 / 0.4 / 0.1, then grayscale with probability 0.2), run on a random
  half of the images. No crop is printed; ``crop=True`` adds SimCLR's random
  resized crop. 1-channel data needs it: with no colour, the distortion is
  left with brightness and contrast, and two views barely differ.
* ``simclr``: SimCLR's CIFAR recipe, random resized crop (scale 0.2 to 1),
  flip 0.5, colour jitter (0.4, 0.4, 0.4, 0.1) with probability 0.8,
  grayscale with probability 0.2.
* ``none``: convert, resize and normalise only (evaluation).

Departures from torchvision's transforms, all for vectorisation: the four
jitter operations run in a fixed order (brightness, contrast, saturation, hue)
instead of a random permutation per call, and the crop is resampled
bilinearly by ``grid_sample`` without antialiasing (a crop much larger than
the output aliases a little).

Example:
    >>> aug = build_augmentation(
    ...     "simclr", image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    ... )
    >>> images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    >>> views = aug(images, torch.Generator().manual_seed(0))  # (8, 3, 32, 32)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("paper", "simclr", "none")

# ITU-R BT.601 luma weights, as used by torchvision's grayscale conversion.
_LUMA = (0.299, 0.587, 0.114)

# torchvision's RandomResizedCrop tries 10 random boxes before falling back to
# a central crop; we draw the 10 candidates at once and keep the first that fits.
_CROP_ATTEMPTS = 10


@dataclass(frozen=True)
class Augmentation:
    """A batched augmentation pipeline: crop, flip, colour distortion, normalise.

    Order of operations: convert to float in [0, 1]; random resized crop to
    ``image_size`` (or a plain resize when ``crop`` is off); horizontal flip;
    colour distortion; normalisation by ``mean`` and ``std``.

    The colour distortion runs on each image with probability ``color_p``;
    inside it, colour jitter runs with probability ``jitter_p`` and grayscale
    with probability ``grayscale_p``. Saturation, hue and grayscale act only on
    3-channel images; brightness and contrast act on any.

    Attributes:
        name: Recipe name, recorded by :meth:`describe`.
        image_size: Side of the square output.
        mean: Per-channel mean of pixels in [0, 1].
        std: Per-channel standard deviation, positive.
        crop: Whether to take a random resized crop.
        crop_scale: Range of the crop's area as a fraction of the image.
        crop_ratio: Range of the crop's aspect ratio (width / height).
        flip_p: Probability of a horizontal flip.
        color_p: Probability that the colour distortion runs at all.
        jitter_p: Probability of colour jitter, given the distortion runs.
        brightness: Brightness factor drawn from ``[max(0, 1 - b), 1 + b]``.
        contrast: Contrast factor drawn from ``[max(0, 1 - c), 1 + c]``.
        saturation: Saturation factor drawn from ``[max(0, 1 - s), 1 + s]``.
        hue: Hue shift drawn from ``[-hue, hue]`` turns, ``hue`` in [0, 0.5].
        grayscale_p: Probability of grayscale, given the distortion runs.

    Raises:
        ValueError: If a parameter is out of range.
    """

    name: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: bool = False
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.0
    color_p: float = 0.0
    jitter_p: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    grayscale_p: float = 0.0

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise sequences to tuples of floats via setattr.
        for key in ("mean", "std", "crop_scale", "crop_ratio"):
            object.__setattr__(self, key, tuple(float(v) for v in getattr(self, key)))

        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(
                f"image_size must be an integer >= 1, got {self.image_size!r}"
            )
        if len(self.mean) == 0 or len(self.mean) != len(self.std):
            raise ValueError(
                "mean and std need one entry per channel and the same length, "
                f"got mean={self.mean} and std={self.std}"
            )
        if any(not s > 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(
                f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}"
            )
        low, high = self.crop_ratio
        if not 0 < low <= high:
            raise ValueError(
                f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}"
            )
        for key in ("flip_p", "color_p", "jitter_p", "grayscale_p"):
            value = getattr(self, key)
            if not 0 <= value <= 1:
                raise ValueError(f"{key} must be in [0, 1], got {value!r}")
        for key in ("brightness", "contrast", "saturation"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue!r}")

    def describe(self) -> dict[str, Any]:
        """All parameters, JSON-serialisable, to record with each run.

        Returns:
            The fields of this object (tuples as lists) plus the fixed
            implementation choices (interpolation, jitter order).
        """
        description = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }
        description["interpolation"] = "bilinear"
        description["jitter_order"] = ["brightness", "contrast", "saturation", "hue"]
        return description

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Augment a batch, each image with its own random parameters.

        Args:
            images: Shape ``(B, C, H, W)``, uint8 in [0, 255] or floating point
                in [0, 1], on any device; ``C`` must match ``len(mean)``.
            generator: Source of every random draw. Parameters are drawn on the
                generator's device (a CPU generator can drive CUDA images) and
                moved to the images' device. ``None`` uses torch's default CPU
                generator.

        Returns:
            Shape ``(B, C, image_size, image_size)``, float32, normalised.

        Raises:
            ValueError: If ``images`` has the wrong rank, dtype or channels.
        """
        if images.ndim != 4:
            raise ValueError(
                f"images must have shape (B, C, H, W), got {tuple(images.shape)}"
            )
        if images.shape[1] != len(self.mean):
            raise ValueError(
                f"images have {images.shape[1]} channels but mean/std have "
                f"{len(self.mean)}"
            )
        if images.dtype == torch.uint8:
            x = images.float().div_(255.0)
        elif images.is_floating_point():
            x = images.float()
        else:
            raise ValueError(
                f"images must be uint8 or floating point, got {images.dtype}"
            )

        batch, channels, height, width = x.shape
        params = self._draw(batch, height, width, generator)
        params = {key: value.to(x.device) for key, value in params.items()}

        size = self.image_size
        if self.crop:
            grid = F.affine_grid(
                params["theta"], [batch, channels, size, size], align_corners=False
            )
            x = F.grid_sample(
                x, grid, mode="bilinear", padding_mode="border", align_corners=False
            )
        elif (height, width) != (size, size):
            x = F.interpolate(
                x,
                size=(size, size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )

        if self.flip_p > 0:
            x = torch.where(params["flip"].view(-1, 1, 1, 1), x.flip(-1), x)

        if self.color_p > 0:
            if self.jitter_p > 0:
                jittered = _color_jitter(
                    x,
                    params["brightness"],
                    params["contrast"],
                    params["saturation"],
                    params["hue"] if self.hue > 0 else None,
                )
                x = torch.where(params["jitter"].view(-1, 1, 1, 1), jittered, x)
            if self.grayscale_p > 0 and channels == 3:
                gray = _grayscale(x).expand_as(x)
                x = torch.where(params["grayscale"].view(-1, 1, 1, 1), gray, x)

        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def _draw(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        """Draw every random parameter of the batch, on the generator's device.

        The draws happen in a fixed order, so one generator state fixes them all.
        """
        device = generator.device if generator is not None else torch.device("cpu")

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=device)

        def factor(strength: float) -> torch.Tensor:  # (B,) in [1 - s, 1 + s]
            low = max(0.0, 1.0 - strength)
            return low + (1.0 + strength - low) * uniform(batch)

        params: dict[str, torch.Tensor] = {}
        if self.crop:
            params["theta"] = self._crop_theta(
                batch, height, width, uniform, device
            )  # (B, 2, 3)
        if self.flip_p > 0:
            params["flip"] = uniform(batch) < self.flip_p  # (B,)
        if self.color_p > 0:
            distort = uniform(batch) < self.color_p  # (B,)
            if self.jitter_p > 0:
                params["jitter"] = distort & (uniform(batch) < self.jitter_p)
                params["brightness"] = factor(self.brightness)
                params["contrast"] = factor(self.contrast)
                params["saturation"] = factor(self.saturation)
                params["hue"] = self.hue * (2.0 * uniform(batch) - 1.0)
            if self.grayscale_p > 0:
                params["grayscale"] = distort & (uniform(batch) < self.grayscale_p)
        return params

    def _crop_theta(
        self,
        batch: int,
        height: int,
        width: int,
        uniform: Callable[..., torch.Tensor],
        device: torch.device,
    ) -> torch.Tensor:
        """Affine matrices ``(B, 2, 3)`` mapping the output onto random crop boxes.

        The boxes follow torchvision's RandomResizedCrop: area and log aspect
        ratio uniform in their ranges, integer sides, first of 10 candidates
        that fits, else the largest central box within the ratio range.
        """
        area = float(height * width)
        scale_low, scale_high = self.crop_scale
        log_low, log_high = (math.log(r) for r in self.crop_ratio)
        scale = scale_low + (scale_high - scale_low) * uniform(batch, _CROP_ATTEMPTS)
        ratio = torch.exp(
            log_low + (log_high - log_low) * uniform(batch, _CROP_ATTEMPTS)
        )
        box_w = torch.sqrt(area * scale * ratio).round()  # (B, attempts)
        box_h = torch.sqrt(area * scale / ratio).round()
        fits = (box_w >= 1) & (box_h >= 1) & (box_w <= width) & (box_h <= height)
        first = fits.int().argmax(dim=1, keepdim=True)  # first candidate that fits
        box_w = box_w.gather(1, first).squeeze(1)  # (B,)
        box_h = box_h.gather(1, first).squeeze(1)

        # Fallback when no candidate fits: central box, aspect ratio clamped.
        in_ratio = width / height
        if in_ratio < self.crop_ratio[0]:
            fallback_w, fallback_h = width, round(width / self.crop_ratio[0])
        elif in_ratio > self.crop_ratio[1]:
            fallback_w, fallback_h = round(height * self.crop_ratio[1]), height
        else:
            fallback_w, fallback_h = width, height
        found = fits.any(dim=1)
        box_w = torch.where(found, box_w, float(fallback_w))
        box_h = torch.where(found, box_h, float(fallback_h))
        top = torch.floor(uniform(batch) * (height - box_h + 1))
        left = torch.floor(uniform(batch) * (width - box_w + 1))
        top = torch.where(found, top, torch.floor((height - box_h) / 2))
        left = torch.where(found, left, torch.floor((width - box_w) / 2))

        # In affine_grid's normalised coordinates (align_corners=False) the box
        # [left, left + w) spans [2 left / W - 1, 2 (left + w) / W - 1].
        theta = torch.zeros(batch, 2, 3, device=device)
        theta[:, 0, 0] = box_w / width
        theta[:, 0, 2] = (2 * left + box_w) / width - 1
        theta[:, 1, 1] = box_h / height
        theta[:, 1, 2] = (2 * top + box_h) / height - 1
        return theta


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images ``(B, 3, H, W)`` in [0, 1], shape ``(B, 1, H, W)``."""
    weights = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _color_jitter(
    x: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor | None,
) -> torch.Tensor:
    """Jitter images ``(B, C, H, W)`` in [0, 1] with per-image factors ``(B,)``.

    Brightness and contrast apply to any number of channels; saturation and
    hue only to RGB. Each step clamps to [0, 1], as torchvision does. ``hue``
    None skips the (costly) HSV round trip.
    """
    channels = x.shape[1]
    x = (x * brightness.view(-1, 1, 1, 1)).clamp_(0, 1)

    luma = _grayscale(x) if channels == 3 else x
    mean = luma.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    c = contrast.view(-1, 1, 1, 1)
    x = (c * x + (1 - c) * mean).clamp_(0, 1)

    if channels != 3:
        return x

    s = saturation.view(-1, 1, 1, 1)
    x = (s * x + (1 - s) * _grayscale(x)).clamp_(0, 1)
    return x if hue is None else _shift_hue(x, hue)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift the HSV hue of RGB images ``(B, 3, H, W)`` by ``shift`` ``(B,)`` turns.

    Same result as torchvision's ``adjust_hue`` (RGB -> HSV -> RGB), batched.
    """
    red, green, blue = x.unbind(dim=1)  # each (B, H, W)
    value, _ = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), 0.0)

    # Hue in sixths of a turn, from whichever channel is the largest.
    safe_chroma = chroma.clamp_min(1e-12)
    hue = torch.where(
        value == red,
        torch.remainder((green - blue) / safe_chroma, 6.0),
        torch.where(
            value == green,
            (blue - red) / safe_chroma + 2.0,
            (red - green) / safe_chroma + 4.0,
        ),
    )
    hue = torch.where(chroma > 0, hue, 0.0)
    hue = torch.remainder(hue + 6.0 * shift.view(-1, 1, 1), 6.0)

    # HSV -> RGB: channel n (5 red, 3 green, 1 blue) is
    # V - V S clamp(min(k, 4 - k), 0, 1) with k = (n + hue) mod 6.
    sixths = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype)
    k = torch.remainder(sixths.view(1, 3, 1, 1) + hue.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)  # (B, 3, H, W)
    return value.unsqueeze(1) * (1.0 - saturation.unsqueeze(1) * ramp)


def build_augmentation(
    name: str,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop: bool | None = None,
    crop_scale: float = 0.2,
) -> Augmentation:
    """Build one of the named recipes (see the module docstring).

    Args:
        name: One of :data:`AUGMENTATIONS`.
        image_size: Side of the square output.
        mean: Per-channel mean of pixels in [0, 1] (the dataset's).
        std: Per-channel standard deviation (the dataset's).
        crop: Add (True) or drop (False) the random resized crop; ``None``
            keeps the recipe's default (``simclr``: on; ``paper``, ``none``:
            off).
        crop_scale: Smallest area of the random resized crop, as a fraction
            of the image; the largest is the whole image.

    Returns:
        The augmentation.

    Raises:
        ValueError: If ``name`` is unknown, or ``crop=True`` is asked of
            ``none``.
    """
    common = {
        "image_size": image_size,
        "mean": tuple(mean),
        "std": tuple(std),
        "crop_scale": (crop_scale, 1.0),
    }
    jitter = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
    if name == "paper":
        return Augmentation(
            name,
            **common,
            crop=bool(crop),
            flip_p=0.75,
            color_p=0.5,
            jitter_p=1.0,
            grayscale_p=0.2,
            **jitter,
        )
    if name == "simclr":
        return Augmentation(
            name,
            **common,
            crop=True if crop is None else crop,
            flip_p=0.5,
            color_p=1.0,
            jitter_p=0.8,
            grayscale_p=0.2,
            **jitter,
        )
    if name == "none":
        if crop:
            raise ValueError(
                "augmentation 'none' has no random part, so it takes no crop; "
                "got crop=True, accepted: crop=None or crop=False"
            )
        return Augmentation(name, **common)
    raise ValueError(
        f"unknown augmentation {name!r}; valid names: {list(AUGMENTATIONS)}"
    )
