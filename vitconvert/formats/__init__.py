"""File formats, read and written with numpy alone: `.npz` archives, safetensors (streamed,
atomic), storage dtypes (bfloat16 as raw bits), and our weights file with its JSON record.
Imports only `core`."""
