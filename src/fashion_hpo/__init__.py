"""fashion-hpo: Optuna search over PyTorch FashionMNIST classifiers, tracked in MLflow.

The layers are folders, each importing only from those below it (the import-linter contracts in pyproject.toml):
cli -> pipeline -> tracking | registry -> search -> training | storage -> model | data -> core.
Kept import-free on purpose: the registered model ships this file and the `model` folder as its code.
"""

__version__ = "0.1.0"
