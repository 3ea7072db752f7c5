"""MNN (Alibaba's mobile inference engine): MNNConvert from the ONNX hub, mnnquant int8, host predictor, contract."""
