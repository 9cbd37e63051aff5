"""The search space: the one place that calls `trial.suggest_*`."""

from __future__ import annotations

import optuna

from fashion_hpo.core.constants import MODEL_KINDS
from fashion_hpo.model.architectures import CNNConfig, MLPConfig, ModelConfig, TrialConfig

# A live trial samples; a FixedTrial replays a finished trial's params through the same space.
AnyTrial = optuna.Trial | optuna.trial.FixedTrial

OPTIMIZERS = ("Adam", "AdamW", "RMSprop", "SGD")
BATCH_SIZES = (64, 128, 256, 512)
_BASELINE_TRAINING = {
    "optimizer": "AdamW",
    "lr": 1e-3,
    "batch_size": 128,
    "use_weight_decay": True,
    "weight_decay": 1e-4,
}
# A known-good point of each space, trained as a new study's first trial: the search then starts from a sound
# result instead of a few random draws, which matters most when the budget allows only a handful of trials.
BASELINE_PARAMS: dict[str, dict[str, object]] = {
    "mlp": {"n_layers": 2, "n_units_l0": 1024, "n_units_l1": 512, "dropout_l0": 0.3, "dropout_l1": 0.3}
    | _BASELINE_TRAINING,
    "cnn": {
        "n_conv_blocks": 2,
        "channels_b0": 32,
        "channels_b1": 64,
        "kernel_size": 3,
        "batch_norm": True,
        "dropout": 0.3,
        "dense_units": 128,
    }
    | _BASELINE_TRAINING,
}


def suggest_mlp(trial: AnyTrial) -> MLPConfig:
    """The seed's MLP space: 1-3 layers, log-scaled widths, per-layer dropout."""
    n_layers = trial.suggest_int("n_layers", 1, 3)
    units = tuple(trial.suggest_int(f"n_units_l{i}", 4, 1024, log=True) for i in range(n_layers))
    dropouts = tuple(trial.suggest_float(f"dropout_l{i}", 0.0, 0.5) for i in range(n_layers))
    return MLPConfig(hidden_units=units, dropouts=dropouts)


def suggest_cnn(trial: AnyTrial) -> CNNConfig:
    """1-3 conv blocks with their own widths, kernel 3 or 5, optional batch norm, dropout, dense head."""
    n_blocks = trial.suggest_int("n_conv_blocks", 1, 3)
    channels = tuple(trial.suggest_int(f"channels_b{i}", 8, 128, log=True) for i in range(n_blocks))
    return CNNConfig(
        channels=channels,
        kernel_size=trial.suggest_categorical("kernel_size", [3, 5]),
        batch_norm=trial.suggest_categorical("batch_norm", [True, False]),
        dropout=trial.suggest_float("dropout", 0.0, 0.5),
        dense_units=trial.suggest_int("dense_units", 32, 512, log=True),
    )


def suggest_model(trial: AnyTrial, kind: str) -> ModelConfig:
    """The architecture of model kind `kind`."""
    if kind == "mlp":
        return suggest_mlp(trial)
    if kind == "cnn":
        return suggest_cnn(trial)
    raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")


def suggest_config(trial: AnyTrial, kind: str) -> TrialConfig:
    """Sample one trial's configuration for model kind `kind` ("mlp" or "cnn"); any other kind raises ValueError."""
    model = suggest_model(trial, kind)
    optimizer = trial.suggest_categorical("optimizer", list(OPTIMIZERS))
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    batch_size = trial.suggest_categorical("batch_size", list(BATCH_SIZES))
    # A log scale cannot reach 0, so "no weight decay" is its own choice.
    use_wd = trial.suggest_categorical("use_weight_decay", [False, True])
    weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True) if use_wd else 0.0
    momentum = trial.suggest_float("momentum", 0.0, 0.99) if optimizer == "SGD" else 0.0
    return TrialConfig(model, optimizer, lr, batch_size, weight_decay, momentum)


def config_from_params(params: dict[str, object], kind: str) -> TrialConfig:
    """Rebuild a finished trial's configuration from its params, through the same space."""
    return suggest_config(optuna.trial.FixedTrial(params), kind)
