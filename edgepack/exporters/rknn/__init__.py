"""Rockchip RKNN: ONNX -> ``.rknn`` with RKNN-Toolkit2 in its own venv, checked on the toolkit's x86 simulator."""
