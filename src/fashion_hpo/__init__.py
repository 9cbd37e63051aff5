"""fashion-hpo: Optuna search over PyTorch FashionMNIST classifiers, tracked in MLflow.

Layers, each importing only from the layers below it (tests/test_layers.py checks this, lazy imports included):

1. entry points:   cli (and __main__, which runs it)
2. orchestration:  pipeline
3. stages:         study, workers, runs, reconcile, tracking, artifacts, registry, predict
                   (within the layer: workers -> runs -> tracking; reconcile -> tracking; artifacts -> study)
4. units:          objective, training, search_space, storage, serving, integrity, costs
                   (within the layer: objective -> training, search_space, costs)
5. foundations:    models, data, settings, flags, process, seeding, constants
                   (within the layer: flags -> settings -> constants)

Kept import-free on purpose: the registered model ships this package as code and must load with torch alone.
"""

__version__ = "0.1.0"
