"""ExecuTorch (XNNPACK delegate): exporter, PT2E quantizer adapter, host predictor and the op descriptor."""
