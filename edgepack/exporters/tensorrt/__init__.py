"""TensorRT (Jetson): portable (QDQ) ONNX plus the on-device engine build; the engine is built and timed here
only where ``trtexec`` and an NVIDIA GPU exist (:mod:`.engine`)."""
