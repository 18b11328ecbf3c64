"""fsac.calibration: decision thresholds from normal images and INT8 quantization."""
