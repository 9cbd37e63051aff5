"""Settings of the commands that use a registered model (`predict`, `verify`), declared once like RunSettings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fashion_hpo.core.constants import CHAMPION_ALIAS, DEFAULT_REGISTERED_MODEL_NAME
from fashion_hpo.core.settings import count, setting

PREDICT, VERIFY = "predict", "verify"
INVERT_CHOICES = ("auto", "yes", "no")
CHAMPION_URI = f"models:/{DEFAULT_REGISTERED_MODEL_NAME}@{CHAMPION_ALIAS}"


@dataclass(frozen=True)
class PredictSettings:
    """What `fashion-hpo predict` classifies, with which model."""

    images: list[Path] = setting(
        [],
        "PNG/JPEG files to classify (any size or colour mode)",
        commands=(PREDICT,),
        positional=True,
        parse=Path,
        shown="",
    )
    model_uri: str = setting(CHAMPION_URI, "model to load", commands=(PREDICT,))
    invert: str = setting(
        "auto",
        "FashionMNIST is a light garment on a dark background: yes inverts every image, no none, auto those whose "
        "border is light, like a photo on white",
        choices=INVERT_CHOICES,
        commands=(PREDICT,),
    )
    json: bool = setting(
        False, "print the predictions as JSON (--json), not one line per image", commands=(PREDICT,), mlproject=False
    )
    test_samples: int = setting(
        0,
        "instead of files, classify this many official test images and print the accuracy",
        parse=count(0),
        commands=(PREDICT,),
    )
    data_dir: Path = setting(Path("data"), "FashionMNIST folder for --test-samples", parse=Path, commands=(PREDICT,))

    def __post_init__(self) -> None:
        # MLproject passes '' when no image is given.
        object.__setattr__(self, "images", [Path(p) for p in self.images if str(p) not in ("", ".")])


@dataclass(frozen=True)
class VerifySettings:
    """Which registered model `fashion-hpo verify` checks, and where it keeps the checked copy."""

    model_uri: str = setting(
        CHAMPION_URI,
        "models:/NAME@ALIAS or models:/NAME/VERSION",
        commands=(VERIFY,),
        positional=True,
        mlproject=False,
    )
    keep: Path | None = setting(
        None,
        "keep the checked copy in this new folder, e.g. to serve it with `mlflow models serve -m FOLDER`; "
        "empty = check only",
        parse=Path,
        commands=(VERIFY,),
        shown="",
        mlproject=False,
    )
