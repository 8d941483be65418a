"""smserve: a Django + DRF SageMaker container for scikit-learn models."""

__version__ = "0.1.0"
