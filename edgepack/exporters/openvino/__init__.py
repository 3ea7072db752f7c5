"""OpenVINO (CPU plugin): exporter, host predictor, NNCF quantizer adapter and ``rt_info`` contract."""
