"""Model runtimes and files: ONNX Runtime, TensorFlow, torch devices, hub downloads, GPU memory."""
