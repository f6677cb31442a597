"""Inference: images to model inputs (decoding, the record's preprocessing, batches), labels,
runtime settings, attention maps, and the `Predictor`. Imports `core`, `formats` and `model`."""
