"""Names shared by every stage: metrics, the optimized direction, classes, registry defaults."""

from typing import Literal

# Per-epoch metrics of a trial's child run (step = epoch, 1-based).
TRAIN_LOSS = "train_loss"
VAL_ACCURACY = "val_accuracy"
VAL_LOSS = "val_loss"
EPOCH_SECONDS = "epoch_seconds"
# Per-epoch metrics of the best configuration's refit, on the study's run (step = epoch).
REFIT_TRAIN_LOSS = "refit_train_loss"
REFIT_EPOCH_SECONDS = "refit_epoch_seconds"

# The optimized metric and its direction: trials are selected on validation accuracy, never on test.
OPTIMIZED_METRIC = VAL_ACCURACY
DIRECTION: Literal["maximize"] = "maximize"

# Costs of a trained model, logged on its trial's child run (and recorded on a registered version).
N_PARAMS = "n_params"
FLOPS = "flops"
LATENCY_MS = "latency_ms"
# What `--objectives` may name, with the direction each is optimized in; the first objective is always the optimized
# metric (validation accuracy), so a multi-objective study trades accuracy against one cost.
OBJECTIVE_DIRECTIONS: dict[str, Literal["maximize", "minimize"]] = {
    VAL_ACCURACY: "maximize",
    LATENCY_MS: "minimize",
    N_PARAMS: "minimize",
    FLOPS: "minimize",
}

# Metrics of the final model, logged once on the parent run.
TEST_ACCURACY = "test_accuracy"
TEST_LOSS = "test_loss"
CLASS_ACCURACY_PREFIX = "test_class_accuracy"

MODEL_KINDS = ("mlp", "cnn")
DEFAULT_REGISTERED_MODEL_NAME = "fashion-mnist-classifier"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
PROMOTE_CHOICES = ("if-better", "if-significant", "always")

# Tag of every run (parent, worker and trial) with the name of its Optuna study.
STUDY_TAG = "study_name"

# User attributes (and, through the tracker, tags) of a trial whose objective raised.
EXCEPTION_TYPE = "exception_type"
EXCEPTION_MESSAGE = "exception_message"
# User attribute of a trial that an interrupt (Ctrl-C, SIGTERM) stopped: it does not count toward --n-trials.
INTERRUPTED = "interrupted"
# User attribute (and tag) of the trial that trained the search space's baseline configuration.
BASELINE = "baseline"
