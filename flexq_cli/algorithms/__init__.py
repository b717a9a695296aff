"""Accuracy algorithms that choose the INT6 codes and scales (clipping search, GPTQ) or transform the float model
before quantization (SmoothQuant-style smoothing). Plain tensor functions; the glue lives in ``sequential.py``
and ``quantize.py``. None of them changes the packed format or the integer numerics (reference.py)."""
