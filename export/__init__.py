"""fsac.export: the fused ONNX graph (`fsac export`), its parity check, graph optimisation
and TensorRT engines."""
