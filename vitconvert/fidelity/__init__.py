"""Fidelity checks of our files against the source framework: `verify` runs timm's model on the same weights."""
