"""The intent classifier: base weights, fine-tuning, calibration, evaluation, ONNX export, the registry gate and the served model."""
