"""Our weights files to the formats deployment runtimes read (ONNX); above `model`, beside `inference`."""
