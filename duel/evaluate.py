"""Frozen-backbone evaluation: kNN, the paper's linear probe, class geometry.

Evaluation is the only place besides the memory's analysis buffer where labels
are read. Features come from the backbone (before the projection head), as in the
paper's linear-probe protocol (Appendix E).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from duel.metrics import (
    inter_class_similarity,
    intra_class_variance,
    knn_accuracy,
)

log = logging.getLogger(__name__)


def balanced_subset(labels: Tensor, per_class: int, seed: int = 0) -> Tensor:
    """Indices of up to ``per_class`` examples of every class, drawn at random.

    The draw depends on ``seed`` only, so every run of a sweep is evaluated on the
    same images.

    Args:
        labels: (n,) class labels.
        per_class: examples per class, >= 1 (all of a smaller class).
        seed: seed of the draw.

    Returns:
        (m,) sorted indices.
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:per_class]])
    return torch.cat(chosen).sort().values


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: Tensor,
    prepare: callable,
    device: torch.device,
    batch_size: int = 512,
    progress: bool = False,
) -> Tensor:
    """Encodes uint8 images in eval mode; (n, feature_dim) float32 on the CPU.

    Args:
        encoder: maps a prepared batch (B, C, H, W) to (B, D).
        images: (n, C, H, W) uint8.
        prepare: turns a uint8 batch into the encoder's input (resize, normalise).
        device: where to run.
        batch_size: images per forward pass.
        progress: show a progress bar.
    """
    was_training = encoder.training
    encoder.eval()
    features = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="features", disable=not progress, leave=False):
        batch = prepare(images[start : start + batch_size].to(device))
        features.append(encoder(batch).float().cpu())
    encoder.train(was_training)
    return torch.cat(features)


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """The paper's probe: one linear layer on frozen features, Adam, fixed epochs.

    Args:
        train_features: (n, D) cached features.
        train_labels: (n,) labels.
        test_features: (m, D).
        test_labels: (m,).
        num_classes: C.
        epochs: passes over the training features (0 returns chance).
        lr, weight_decay, batch_size: Adam's settings (Appendix E: 1e-3, 1e-6, 256).
        seed: seeds the layer's initialisation and the shuffling.

    Returns:
        ``{"train_accuracy": ..., "test_accuracy": ...}`` in [0, 1].
    """
    # Standardise with the training features' statistics: raw backbone features
    # (a random-init one above all) can sit at scales where Adam at 1e-3 does not
    # fit a linear layer in 100 epochs. The paper does not say how it scaled them.
    mean = train_features.mean(0, keepdim=True)
    std = train_features.std(0, keepdim=True).clamp_min(1e-6)
    train_features = (train_features - mean) / std
    test_features = (test_features - mean) / std

    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(train_features.shape[1], num_classes)
    with torch.no_grad():
        bound = 1 / train_features.shape[1] ** 0.5
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.zero_()
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        order = torch.randperm(len(train_features), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(layer(train_features[batch]), train_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    with torch.no_grad():
        train_accuracy = (layer(train_features).argmax(1) == train_labels).float()
        test_accuracy = (layer(test_features).argmax(1) == test_labels).float()
    return {
        "train_accuracy": float(train_accuracy.mean()),
        "test_accuracy": float(test_accuracy.mean()),
    }


def evaluate_features(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    *,
    knn_k: int,
    knn_temperature: float,
    probe_epochs: int,
    probe_lr: float,
    probe_weight_decay: float,
    probe_batch_size: int,
    seed: int = 0,
) -> dict[str, float]:
    """kNN accuracy, linear-probe accuracy and class geometry of test features."""
    knn = knn_accuracy(
        train_features,
        train_labels,
        test_features,
        test_labels,
        num_classes,
        k=knn_k,
        temperature=knn_temperature,
    )
    probe = linear_probe(
        train_features,
        train_labels,
        test_features,
        test_labels,
        num_classes,
        epochs=probe_epochs,
        lr=probe_lr,
        weight_decay=probe_weight_decay,
        batch_size=probe_batch_size,
        seed=seed,
    )
    return {
        "knn_accuracy": knn,
        "linear_probe_accuracy": probe["test_accuracy"],
        "linear_probe_train_accuracy": probe["train_accuracy"],
        "intra_class_variance": intra_class_variance(test_features, test_labels),
        "inter_class_similarity": inter_class_similarity(test_features, test_labels),
    }
