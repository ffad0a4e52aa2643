"""Models: torch modules, losses, ONNX export, and count-based baselines."""
