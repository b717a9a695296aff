"""FlexQ: post-training INT6 (W6A6 / W6A8) quantization for LLaMA-family models."""

__version__ = "0.1.0"
