"""Classifier architectures and their configs. Models take plain typed configs, never an Optuna trial.

Every model takes float32 images (N, 1, 28, 28) with pixel intensities in [0, 1] and returns class scores
(logits) of shape (N, 10); the dataset's normalization is the model's first layer, so callers never need
the training statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# FashionMNIST's classes, in label order.
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
N_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (1, 28, 28)
# Pixel mean and standard deviation of the 60,000 FashionMNIST training images (intensities in [0, 1]).
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530


@dataclass(frozen=True)
class MLPConfig:
    """A multi-layer perceptron: one (units, dropout) pair per hidden layer."""

    hidden_units: tuple[int, ...]
    dropouts: tuple[float, ...]


@dataclass(frozen=True)
class CNNConfig:
    """A small convolutional net: conv blocks (conv, optional batch norm, ReLU, 2x2 max-pool), then a dense head."""

    channels: tuple[int, ...]
    kernel_size: int
    batch_norm: bool
    dropout: float
    dense_units: int


ModelConfig = MLPConfig | CNNConfig


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial trains with: the architecture and the optimizer settings."""

    model: ModelConfig
    optimizer: str
    lr: float
    batch_size: int
    weight_decay: float
    momentum: float


class Normalize(nn.Module):
    """Standardize [0, 1] pixel intensities with the training set's statistics."""

    def __init__(self, mean: float = PIXEL_MEAN, std: float = PIXEL_STD) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mlp_layers(config: MLPConfig) -> list[nn.Module]:
    """Flatten, then Linear-ReLU-Dropout per hidden layer, then the classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    for units, dropout in zip(config.hidden_units, config.dropouts, strict=True):
        layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(dropout)]
        width = units
    layers.append(nn.Linear(width, N_CLASSES))
    return layers


def cnn_layers(config: CNNConfig) -> list[nn.Module]:
    """Conv blocks that halve the resolution each, then a dense head with dropout."""
    layers: list[nn.Module] = []
    in_channels, side = IMAGE_SHAPE[0], IMAGE_SHAPE[1]
    for out_channels in config.channels:
        layers.append(
            nn.Conv2d(in_channels, out_channels, config.kernel_size, padding="same", bias=not config.batch_norm)
        )
        if config.batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        in_channels, side = out_channels, side // 2
    layers += [
        nn.Flatten(),
        nn.Dropout(config.dropout),
        nn.Linear(in_channels * side * side, config.dense_units),
        nn.ReLU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.dense_units, N_CLASSES),
    ]
    return layers


def build_model(config: ModelConfig) -> nn.Sequential:
    """The classifier for a config, normalization included."""
    body = mlp_layers(config) if isinstance(config, MLPConfig) else cnn_layers(config)
    return nn.Sequential(Normalize(), *body)
