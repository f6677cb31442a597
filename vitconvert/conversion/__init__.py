"""Conversion: one mapping engine (`mapping`) and one rule table per source format (`jax_layouts`
for Google's JAX files). The JAX path is numpy only; `timm` needs torch to read pickled state dicts.
Imports `core` and `formats`."""
