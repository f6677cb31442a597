"""Core: what every layer shares. The architecture description (`ViTConfig`) and the parameter
names and shapes it implies, the error type, value checks for JSON-read fields, and where named
models live on disk. Standard library and numpy only; imports nothing else of ours."""
