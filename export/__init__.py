"""Deployment: ONNX, TensorRT and AOTInductor exporters and their runtimes."""
