"""NCNN (Tencent): pnnx conversion to ``.param`` + ``.bin``, ncnn-format int8 calibration, host predictor."""
