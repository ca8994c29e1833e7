"""Export: spec from the schema, wrapper, ONNX/TorchScript writers, parity validation, Triton repository."""
