"""The torch model: our ViT (`vit`), the hybrid ResNet stem, position-embedding resampling, and
`load_model`. Imports `core` and `formats`."""
