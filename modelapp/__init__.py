"""smserve: a Django + DRF SageMaker container for scikit-learn models."""

from modelapp import lazy

__version__ = "0.1.0"

# Before any module imports DRF, so that it does not bring psycopg in (``lazy.py``).
lazy.import_rest_framework()
