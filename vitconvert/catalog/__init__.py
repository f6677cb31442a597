"""The published checkpoints: the manifest (`weights_manifest.json`, shipped in `data/`) and
downloads, which convert what they fetch. Imports `core`, `formats` and `convert`; never torch."""
