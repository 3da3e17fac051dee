"""Models: ViT-FIQA with its 12 exits, FR backbones (torch or ONNX), baselines, FLOP counts."""
