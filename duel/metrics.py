"""The paper's measurements: memory class entropy, class geometry, kNN accuracy.

Labels enter here and nowhere in training: every function below is analysis.
Intra-class variance and inter-class similarity follow the paper's Eq. 8 and 9 as
reconstructed in SPEC 7: class centroids are taken on the unit sphere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def class_frequencies(labels: Tensor, num_classes: int) -> Tensor:
    """Share of each class among the labels, ignoring -1 (an empty slot).

    Args:
        labels: (n,) integer labels in [0, num_classes) or -1.
        num_classes: C, >= 1.

    Returns:
        (C,) float64 frequencies summing to 1 (all zeros when no label is valid).

    Raises:
        ValueError: when num_classes < 1 or a label is out of range.
    """
    counts = class_counts(labels, num_classes).to(torch.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    """Number of labels of each class, ignoring -1; (C,) long."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes}")
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    valid = labels[labels >= 0]
    if len(valid) and int(valid.max()) >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) or be -1, got {int(valid.max())}"
        )
    return torch.bincount(valid, minlength=num_classes)


def class_entropy(labels: Tensor, num_classes: int) -> float:
    """Entropy of the class histogram in nats; log(C) when perfectly balanced.

    Args:
        labels: (n,) labels; -1 (empty slot) is ignored.
        num_classes: C.

    Returns:
        The entropy, 0.0 for no valid label.
    """
    frequencies = class_frequencies(labels, num_classes)
    present = frequencies[frequencies > 0]
    return float(-(present * present.log()).sum())


def _check_features(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if features.ndim != 2:
        raise ValueError(
            f"features must have shape (n, dim), got {tuple(features.shape)}"
        )
    labels = torch.as_tensor(labels).reshape(-1).long().to(features.device)
    if len(labels) != len(features):
        raise ValueError(
            f"labels must have one entry per feature ({len(features)}), "
            f"got {len(labels)}"
        )
    if not torch.isfinite(features).all():
        raise ValueError("features must be finite, got NaN or infinite values")
    return F.normalize(features.double(), dim=1), labels


def class_centroids(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Unit-norm class centroids ``mu_c = normalize(mean_{z in c} z)``.

    Args:
        features: (n, dim); normalised here before averaging.
        labels: (n,) class labels (-1 ignored).

    Returns:
        The classes present, (C',) long, and their centroids, (C', dim) float64.
    """
    features, labels = _check_features(features, labels)
    classes = torch.unique(labels[labels >= 0])
    centroids = torch.stack([features[labels == c].mean(0) for c in classes])
    return classes, F.normalize(centroids, dim=1)


def intra_class_variance_per_class(
    features: Tensor, labels: Tensor
) -> dict[int, float]:
    """Mean squared distance of each class's features to its centroid (Eq. 8)."""
    unit, labels = _check_features(features, labels)
    classes, centroids = class_centroids(features, labels)
    return {
        int(c): float(((unit[labels == c] - mu) ** 2).sum(1).mean())
        for c, mu in zip(classes, centroids, strict=True)
    }


def intra_class_variance(features: Tensor, labels: Tensor) -> float:
    """``(1/C) sum_c mean_{z in c} |z - mu_c|^2`` over the classes present (Eq. 8).

    Lower means tighter classes. Range [0, 4] for unit features.
    """
    per_class = intra_class_variance_per_class(features, labels)
    return sum(per_class.values()) / len(per_class)


def inter_class_similarity_per_class(
    features: Tensor, labels: Tensor
) -> dict[int, float]:
    """Mean cosine of each class centroid to the other classes' centroids."""
    classes, centroids = class_centroids(features, labels)
    if len(classes) < 2:
        raise ValueError(
            f"inter-class similarity needs at least 2 classes, got {len(classes)}"
        )
    cosine = centroids @ centroids.T
    off_diagonal = cosine.sum(1) - cosine.diagonal()
    return {
        int(c): float(value / (len(classes) - 1))
        for c, value in zip(classes, off_diagonal, strict=True)
    }


def inter_class_similarity(features: Tensor, labels: Tensor) -> float:
    """``mean_{c != c'} mu_c . mu_c'`` (Eq. 9). Lower means better separated."""
    per_class = inter_class_similarity_per_class(features, labels)
    return sum(per_class.values()) / len(per_class)


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted k-nearest-neighbour vote on cosine similarity.

    Each of the k nearest training features votes for its class with weight
    ``exp(cosine / temperature)``, the rule of Wu et al. (2018) that SSL papers
    report as "kNN accuracy".

    Args:
        train_features: (n, dim) features of the labelled reference set.
        train_labels: (n,) labels in [0, num_classes).
        query_features: (m, dim) features to classify.
        num_classes: C.
        k: neighbours, >= 1 (capped at n).
        temperature: > 0.
        chunk_size: queries per similarity block, to bound memory.

    Returns:
        (m,) predicted labels.

    Raises:
        ValueError: on bad k, temperature or shapes.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    train, train_labels = _check_features(train_features, train_labels)
    if query_features.ndim != 2 or query_features.shape[1] != train.shape[1]:
        raise ValueError(
            f"query_features must have shape (m, {train.shape[1]}), "
            f"got {tuple(query_features.shape)}"
        )
    train, query = train.float(), F.normalize(query_features.float(), dim=1)
    query = query.to(train.device)
    k = min(k, len(train))
    predictions = []
    for start in range(0, len(query), chunk_size):
        similarity = query[start : start + chunk_size] @ train.T  # (chunk, n)
        top_similarity, top_index = similarity.topk(k, dim=1)
        weights = (top_similarity / temperature).exp()
        votes = torch.zeros(len(weights), num_classes, device=train.device)
        votes.scatter_add_(1, train_labels[top_index], weights)
        predictions.append(votes.argmax(1))
    return torch.cat(predictions).cpu()


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Accuracy in [0, 1] of :func:`knn_predict` on a labelled test set."""
    predictions = knn_predict(
        train_features, train_labels, test_features, num_classes, k, temperature
    )
    test_labels = torch.as_tensor(test_labels).reshape(-1).long().cpu()
    if len(test_labels) != len(predictions):
        raise ValueError(
            f"test_labels must have one entry per test feature ({len(predictions)}), "
            f"got {len(test_labels)}"
        )
    return float((predictions == test_labels).double().mean())
