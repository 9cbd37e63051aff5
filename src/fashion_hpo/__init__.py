"""fashion-hpo: Optuna search over PyTorch FashionMNIST classifiers, tracked in MLflow.

Kept import-free on purpose: the registered model ships this package as code and must load with torch alone.
"""

__version__ = "0.1.0"
