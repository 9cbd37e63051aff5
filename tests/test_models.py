"""Model output shapes and the normalization contract."""

from __future__ import annotations

import pytest
import torch

from fashion_hpo.model.architectures import CNNConfig, MLPConfig, build_model


@pytest.mark.parametrize(
    "config",
    [
        MLPConfig(hidden_units=(8,), dropouts=(0.0,)),
        MLPConfig(hidden_units=(1024, 64, 4), dropouts=(0.5, 0.1, 0.0)),
        CNNConfig(channels=(8,), kernel_size=3, batch_norm=False, dropout=0.0, dense_units=32),
        CNNConfig(channels=(16, 32, 64), kernel_size=5, batch_norm=True, dropout=0.3, dense_units=128),
    ],
)
def test_models_map_image_batches_to_ten_class_scores(config: MLPConfig | CNNConfig) -> None:
    model = build_model(config).eval()
    scores = model(torch.rand(5, 1, 28, 28))
    assert scores.shape == (5, 10)
    assert scores.dtype == torch.float32
    assert torch.isfinite(scores).all()


def test_model_normalizes_pixels_itself() -> None:
    """Inputs are raw [0, 1] intensities: the first layer standardizes them with the training statistics."""
    model = build_model(MLPConfig(hidden_units=(4,), dropouts=(0.0,)))
    normalized = model[0](torch.full((1, 1, 28, 28), 0.2860))
    assert torch.allclose(normalized, torch.zeros_like(normalized), atol=1e-6)
