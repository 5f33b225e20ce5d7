"""Deploying models: ONNX export (fp32, fp16, int8), benchmarks on ONNX Runtime and the layer latency tables
that latency-aware allocation reads. Delivering a finished run (all three models) is ``pipelines.deliver``."""
