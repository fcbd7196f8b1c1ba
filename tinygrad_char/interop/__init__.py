"""Moving models in and out: ONNX export, and nanoGPT checkpoint import and export."""
