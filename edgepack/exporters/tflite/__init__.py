"""TFLite / LiteRT: exporter, the onnx2tf worker and its client, I/O mapping and host predictor, quantization
choice, layer map, graph reader for placement, metadata contract, and the Android app templates."""
