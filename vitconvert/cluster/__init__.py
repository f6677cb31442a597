"""Batch inference at cluster scale on Ray Data (`pip install 'vitconvert[ray]'`).

One public entry, `predict_dataset`: images in (a Ray Dataset, or paths and URIs read with Ray's own
readers), a Ray Dataset of predictions out, computed by our `Predictor` in a pool of model replicas.
Imports `core`, `formats`, `catalog`, `model` and `inference`; `ray` itself only when called.
"""

from .ray_data import predict_dataset, quiet_ray, write_predictions

__all__ = ["predict_dataset", "quiet_ray", "write_predictions"]
