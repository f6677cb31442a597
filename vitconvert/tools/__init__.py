"""Tools that check our files against other implementations: `verify` against timm."""
