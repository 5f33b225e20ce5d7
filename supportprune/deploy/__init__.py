"""Delivering the models: ONNX export (fp32, fp16, int8), benchmarks on ONNX Runtime and the layer latency tables
that latency-aware allocation reads."""
