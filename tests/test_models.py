"""Tests of duel.models: shapes, the small-image stem and the momentum update."""

import pytest
import torch
from torch import nn

from duel.models import (
    BACKBONES,
    build_backbone,
    build_predictor,
    build_projector,
    make_target,
    momentum_update,
)


@pytest.mark.parametrize("image_size", [8, 28, 32, 64])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize(("name", "feature_dim"), [("small", 128), ("resnet18", 512)])
def test_backbone_output_shapes(name, feature_dim, in_channels, image_size):
    torch.manual_seed(0)
    backbone, reported_dim = build_backbone(name, in_channels, image_size)
    features = backbone(torch.randn(2, in_channels, image_size, image_size))
    assert reported_dim == feature_dim
    assert features.shape == (2, feature_dim)


def test_resnet50_output_shape():
    backbone, feature_dim = build_backbone("resnet50", in_channels=3, image_size=8)
    assert feature_dim == 2048
    assert backbone(torch.randn(2, 3, 8, 8)).shape == (2, 2048)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_small_image_stem(name):
    backbone, _ = build_backbone(name, in_channels=1, image_size=32)
    assert backbone.conv1.kernel_size == (3, 3)
    assert backbone.conv1.stride == (1, 1)
    assert backbone.conv1.in_channels == 1
    assert isinstance(backbone.maxpool, nn.Identity)
    assert isinstance(backbone.fc, nn.Identity)


def test_resnet_keeps_imagenet_stem_above_64_px():
    backbone, _ = build_backbone("resnet18", in_channels=1, image_size=96)
    assert backbone.conv1.stride == (2, 2)
    assert backbone.conv1.in_channels == 1
    assert isinstance(backbone.maxpool, nn.MaxPool2d)


def test_small_backbone_first_layer_keeps_resolution():
    backbone, _ = build_backbone("small", in_channels=1, image_size=28)
    first = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    assert first.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in backbone.modules())


def test_build_backbone_errors():
    with pytest.raises(ValueError, match=", ".join(BACKBONES)) as error:
        build_backbone("vgg", 3, 32)
    assert "'vgg'" in str(error.value)
    with pytest.raises(ValueError, match="in_channels must be an integer >= 1, got 0"):
        build_backbone("small", 0, 32)
    with pytest.raises(ValueError, match="image_size"):
        build_backbone("small", 3, -1)


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize(("kind", "depth"), [("linear", 1), ("mlp2", 2), ("mlp3", 3)])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_projector_shapes_and_depth(kind, depth, batch_norm):
    projector = build_projector(kind, 32, 16, hidden_dim=24, batch_norm=batch_norm)
    assert projector(torch.randn(4, 32)).shape == (4, 16)
    assert len(linear_layers(projector)) == depth
    norms = [m for m in projector.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == (depth - 1 if batch_norm else 0)


def test_projector_output_is_not_normalised():
    torch.manual_seed(0)
    output = build_projector("linear", 8, 4)(10 * torch.randn(5, 8))
    assert not torch.allclose(output.norm(dim=1), torch.ones(5))


def test_build_projector_errors():
    with pytest.raises(ValueError, match="linear, mlp2, mlp3, got 'mlp4'"):
        build_projector("mlp4", 8, 4)
    with pytest.raises(ValueError, match="out_dim must be an integer >= 1, got 0"):
        build_projector("linear", 8, 0)


def test_predictor():
    predictor = build_predictor(16, 32)
    assert predictor(torch.randn(4, 16)).shape == (4, 16)
    assert any(isinstance(m, nn.BatchNorm1d) for m in predictor.modules())


def test_make_target_is_a_frozen_independent_copy():
    online = build_projector("mlp2", 6, 4, hidden_dim=8, batch_norm=True)
    target = make_target(online)
    for online_parameter, target_parameter in zip(
        online.parameters(), target.parameters(), strict=True
    ):
        assert torch.equal(online_parameter, target_parameter)
        assert not target_parameter.requires_grad
        assert online_parameter.requires_grad
    with torch.no_grad():
        next(online.parameters()).add_(1.0)
    assert not torch.equal(next(online.parameters()), next(target.parameters()))


def test_momentum_update_is_an_ema_of_parameters_and_copies_buffers():
    torch.manual_seed(0)
    online = build_projector("mlp2", 6, 4, hidden_dim=8, batch_norm=True)
    target = make_target(online)
    with torch.no_grad():
        for parameter in target.parameters():
            parameter.copy_(torch.randn_like(parameter))
    online(torch.randn(10, 6))  # moves the online BatchNorm running statistics
    before = [p.clone() for p in target.parameters()]

    momentum_update(online, target, momentum=0.9)

    for old, new, reference in zip(
        before, target.parameters(), online.parameters(), strict=True
    ):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * reference)
    for online_buffer, target_buffer in zip(
        online.buffers(), target.buffers(), strict=True
    ):
        assert torch.equal(online_buffer, target_buffer)


def test_momentum_update_extremes():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    kept = [p.clone() for p in target.parameters()]
    momentum_update(online, target, momentum=1.0)
    assert all(map(torch.equal, kept, target.parameters()))
    momentum_update(online, target, momentum=0.0)
    assert all(map(torch.equal, online.parameters(), target.parameters()))


def test_momentum_update_errors():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        momentum_update(nn.Linear(3, 2), nn.Linear(3, 2), momentum=1.5)
    with pytest.raises(ValueError, match="same architecture"):
        momentum_update(nn.Linear(3, 2), nn.Sequential(), momentum=0.5)
