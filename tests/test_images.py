"""Photos as FashionMNIST sees them: trimmed, letterboxed (never squashed), inverted when on white."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashion_hpo.data.raw import DEBIAN_DATASET_DIR
from fashion_hpo.model.serving import predictions_frame
from fashion_hpo.registry.images import read_image
from fashion_hpo.registry.predict import classify


def official_test_image(index: int = 0) -> np.ndarray:
    """Official test image `index` (uint8, 28 x 28), read from Debian's dataset-fashion-mnist."""
    with gzip.open(DEBIAN_DATASET_DIR / "t10k-images-idx3-ubyte.gz") as file:
        file.read(16 + index * 784)
        return np.frombuffer(file.read(784), dtype=np.uint8).reshape(28, 28)


def photo_on_white(garment: np.ndarray, size: tuple[int, int], tmp_path: Path, name: str) -> Path:
    """The garment dark on a white canvas of `size` (width, height), upscaled to the canvas's height, centred."""
    height = size[1]
    dark = Image.fromarray(255 - garment).resize((height, height), Image.Resampling.BICUBIC)
    canvas = Image.new("L", size, 255)
    canvas.paste(dark, ((size[0] - height) // 2, 0))
    path = tmp_path / name
    canvas.convert("RGB").save(path)
    return path


@pytest.mark.parametrize("index", [0, 1, 2])  # an ankle boot, a pullover, trousers
def test_a_garment_on_a_wide_canvas_reads_like_the_same_garment_on_a_square_one(index: int, tmp_path: Path) -> None:
    garment = official_test_image(index)
    square = read_image(photo_on_white(garment, (400, 400), tmp_path, "square.png"))
    wide = read_image(photo_on_white(garment, (800, 400), tmp_path, "wide.png"))
    assert square.shape == wide.shape == (1, 28, 28)
    assert np.abs(square - wide).max() < 0.05, "letterboxed, not squashed: the same pixels either way"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_a_photo_on_white_comes_back_close_to_the_dataset_image(index: int, tmp_path: Path) -> None:
    garment = official_test_image(index)
    photo = read_image(photo_on_white(garment, (800, 400), tmp_path, "photo.jpg"))[0]
    # Positive correlation: inverted back to a light garment on dark, trimmed and scaled like the dataset's.
    assert np.corrcoef(photo.ravel(), garment.ravel())[0, 1] > 0.8


def test_a_blank_image_is_still_an_image(tmp_path: Path) -> None:
    path = tmp_path / "blank.png"
    Image.new("L", (50, 20), 255).save(path)
    assert np.allclose(read_image(path), 0.0), "a white page is an empty dark frame"


class FixedModel:
    """A pyfunc stand-in that gives every image the same class probabilities."""

    def __init__(self, probabilities: list[float]) -> None:
        self.probabilities = np.array(probabilities)

    def predict(self, images: np.ndarray) -> object:
        return predictions_frame(np.tile(self.probabilities, (len(images), 1)))


@pytest.mark.parametrize(("top", "uncertain"), [(0.45, True), (0.55, False)])
def test_a_top_probability_below_one_half_is_reported_uncertain(top: float, uncertain: bool) -> None:
    rest = (1 - top) / 9
    model = FixedModel([rest] * 7 + [top] + [rest] * 2)  # Sneaker on top
    (prediction,) = classify(model, np.zeros((1, 1, 28, 28), dtype=np.float32), ["shoe.png"])
    assert (prediction.class_name, prediction.uncertain) == ("Sneaker", uncertain)
    assert prediction.line().endswith("uncertain: top probability below 0.5") == uncertain
