"""The model layer, below both serving and tuning: the registry of versions, ONNX export and the
ONNX Runtime chat model."""
