"""Conversion: one pipeline (`pipeline.convert`) over source formats that are plug-ins (`source.SourceFormat`,
listed in `source.FORMATS`): each detects its files, opens them as lazy tensor readers and plans the
conversion as a rule table for the mapping engine (`mapping.plan_tensors`). Adding a format is one module
and one registry line. Numpy only until a pickle is read (`formats.state_dict`) or timm's own models are
asked about (`timm_models`). Imports `core` and `formats`."""
