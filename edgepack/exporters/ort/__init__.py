"""ONNX Runtime (CPU): exporter, host predictor and quantizer adapter."""
