"""Backbones, projection heads and momentum (target) networks.

The paper trains a ResNet-50 whose stem is adapted to small images (SPEC 6: a
3x3 stride-1 first convolution and no max-pool on CIFAR-10). ``resnet18`` and
``resnet50`` follow that recipe; ``small`` is a compact CNN for the book's CPU
profile, where a ResNet would not train in the time available.

Example:
    >>> import torch
    >>> from duel.models import build_backbone, build_projector
    >>> backbone, feature_dim = build_backbone("small", in_channels=1, image_size=28)
    >>> projector = build_projector("linear", feature_dim, 256)
    >>> projector(backbone(torch.randn(4, 1, 28, 28))).shape
    torch.Size([4, 256])
"""

from __future__ import annotations

import copy

import torch
import torchvision
from torch import nn

BACKBONES = ("small", "resnet18", "resnet50")
PROJECTORS = ("linear", "mlp2", "mlp3")

# Inputs up to this side length get the small-image ResNet stem (SPEC 6). The
# paper uses it for 32 px CIFAR-10 and for ImageNet-LT resized to 64 px; the
# ImageNet stem would shrink a 64 px image to 16 px before the first block.
SMALL_IMAGE_MAX_SIZE = 64

# Channel widths of the ``small`` backbone's four stages. Chosen by measured
# throughput on a 2-core CPU (forward + backward, batch 256, 1x28x28): this
# design trains ~3.5k images/s with 0.29M parameters; a narrow ResNet of the
# same widths reached ~2.2k, a 16-256 five-stage version ~2.6k with 4x the
# parameters, and doubling the widths ~1.1k.
SMALL_WIDTHS = (16, 32, 64, 128)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallConvNet(nn.Sequential):
    """A compact VGG-style CNN for 28-32 px images on a CPU.

    Four stages of two 3x3 conv-BN-ReLU layers; every stage after the first
    halves the resolution (28 -> 14 -> 7 -> 4), then a global average pool.
    A plain stack, because residual blocks of the same widths trained a third
    slower on the 2-core CPU (see ``SMALL_WIDTHS``).

    Args:
        in_channels: image channels.
        widths: channels of each stage; the last is the feature dimension.

    Shapes:
        (B, in_channels, H, W) -> (B, widths[-1]).
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...] = SMALL_WIDTHS):
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, width in enumerate(widths):
            layers += _conv_bn_relu(channels, width, stride=1 if stage == 0 else 2)
            layers += _conv_bn_relu(width, width, stride=1)
            channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.feature_dim = channels


def build_backbone(
    name: str, in_channels: int, image_size: int
) -> tuple[nn.Module, int]:
    """Builds an encoder from images to feature vectors, randomly initialised.

    Args:
        name: one of ``BACKBONES``.
        in_channels: image channels, >= 1.
        image_size: side length of the (square) input, >= 1. ResNets get the
            small-image stem (3x3 stride-1 first conv, no max-pool) up to 64 px.

    Returns:
        The module, mapping (B, in_channels, H, W) to (B, feature_dim), and
        feature_dim.

    Raises:
        ValueError: on an unknown name or a non-positive size.
    """
    if name not in BACKBONES:
        raise ValueError(
            f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}"
        )
    for parameter, value in (("in_channels", in_channels), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{parameter} must be an integer >= 1, got {value!r}")

    if name == "small":
        network = SmallConvNet(in_channels)
        return network, network.feature_dim

    resnet = getattr(torchvision.models, name)(weights=None)
    if image_size <= SMALL_IMAGE_MAX_SIZE:
        resnet.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        resnet.maxpool = nn.Identity()
    elif in_channels != 3:
        resnet.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    feature_dim = resnet.fc.in_features
    resnet.fc = nn.Identity()
    return resnet, feature_dim


def build_projector(
    kind: str,
    in_dim: int,
    out_dim: int,
    hidden_dim: int = 2048,
    batch_norm: bool = False,
) -> nn.Module:
    """Builds the projection head g between backbone features and the loss.

    The output is not normalised: contrastive methods normalise where their loss
    needs unit vectors, Barlow Twins standardises instead.

    Args:
        kind: ``linear`` (one layer, the paper's CIFAR-10 head), ``mlp2``
            (Linear-[BN]-ReLU-Linear) or ``mlp3`` (three linear layers, the
            paper's ImageNet-LT head).
        in_dim: backbone feature dimension.
        out_dim: projection dimension.
        hidden_dim: width of the hidden layers (``mlp2``, ``mlp3``).
        batch_norm: BatchNorm1d after each hidden linear layer.

    Returns:
        A module mapping (B, in_dim) to (B, out_dim).

    Raises:
        ValueError: on an unknown kind or a non-positive dimension.
    """
    if kind not in PROJECTORS:
        raise ValueError(
            f"projector must be one of {', '.join(PROJECTORS)}, got {kind!r}"
        )
    for parameter, value in (
        ("in_dim", in_dim),
        ("out_dim", out_dim),
        ("hidden_dim", hidden_dim),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{parameter} must be an integer >= 1, got {value!r}")

    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    hidden_layers = 1 if kind == "mlp2" else 2
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(hidden_layers):
        layers.append(nn.Linear(width, hidden_dim))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def build_predictor(dim: int, hidden_dim: int) -> nn.Module:
    """BYOL's predictor q: Linear-BN-ReLU-Linear, (B, dim) -> (B, dim).

    Raises:
        ValueError: on a non-positive dimension.
    """
    return build_projector("mlp2", dim, dim, hidden_dim=hidden_dim, batch_norm=True)


def make_target(online: nn.Module) -> nn.Module:
    """A momentum (target) copy of ``online`` that no optimiser will update.

    Args:
        online: the network trained by gradient descent.

    Returns:
        A deep copy with ``requires_grad`` off on every parameter.
    """
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """Moves ``target`` toward ``online``: theta_t <- m theta_t + (1 - m) theta_o.

    Parameters follow the exponential moving average; buffers (BatchNorm
    running statistics) are copied, so the target evaluates like the online
    network's statistics rather than an average of stale ones.

    Args:
        online: the network trained by gradient descent.
        target: a network of the same architecture, updated in place.
        momentum: m in [0, 1]; 0 copies ``online``, 1 leaves ``target`` as is.

    Raises:
        ValueError: on a momentum outside [0, 1] or mismatched architectures.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    online_parameters = list(online.parameters())
    target_parameters = list(target.parameters())
    online_buffers = list(online.buffers())
    target_buffers = list(target.buffers())
    if len(online_parameters) != len(target_parameters) or len(online_buffers) != len(
        target_buffers
    ):
        raise ValueError(
            "online and target must have the same architecture, got "
            f"{len(online_parameters)} vs {len(target_parameters)} parameters and "
            f"{len(online_buffers)} vs {len(target_buffers)} buffers"
        )

    for online_parameter, target_parameter in zip(
        online_parameters, target_parameters, strict=True
    ):
        target_parameter.lerp_(online_parameter, 1.0 - momentum)
    for online_buffer, target_buffer in zip(
        online_buffers, target_buffers, strict=True
    ):
        target_buffer.copy_(online_buffer)
