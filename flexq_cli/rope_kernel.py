"""Rotary position embedding and the static KV cache write in one CUDA kernel (kernels/rope.cu).

    q = rope_cache_cuda(qkv, cos, sin, slots, keys, values, heads=32, kv_heads=8)

``q`` and the cache entries written equal transformers' ``apply_rotary_pos_emb`` followed by the cache's
``index_copy_`` bit for bit. Arguments are checked here (ValueError naming what is wrong); the launch goes on
PyTorch's current stream (cuda_launch.py), so the call works under CUDA graph capture.
"""

from __future__ import annotations

import torch

from . import cuda_launch as cl

KERNEL_FILE = "rope.cu"
THREADS = 256  # ROPE_THREADS: one output element per thread


def rope_cache_cuda(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor,
                    keys: torch.Tensor, values: torch.Tensor, *, heads: int, kv_heads: int) -> torch.Tensor:
    """The rotated queries (B, T, heads, D); the rotated keys and the values go into ``keys`` / ``values``.

    qkv: (B, T, (heads + 2 kv_heads) * D) float16/bfloat16, the fused q/k/v projection (q heads, k heads, v heads);
    cos, sin: (B, T, D) of qkv's dtype (the model's rotary tables for these tokens); slots: (T,) int64, the cache
    positions of the T tokens (the same for every sequence); keys, values: (B, kv_heads, L, D) of qkv's dtype.
    All CUDA tensors on one device, contiguous. Slots outside [0, L) are not written: check them before the call.
    """
    import numpy as np

    cl.check_tensor("qkv", qkv, None, cl.ACTIVATION_DTYPES)
    dev = qkv.device
    if qkv.dim() != 3:
        raise ValueError(f"qkv must be (batch, tokens, width), got shape {tuple(qkv.shape)}")
    b, t, width = qkv.shape
    d = width // (heads + 2 * kv_heads) if heads > 0 and kv_heads > 0 else 0
    if d == 0 or d % 2 or d * (heads + 2 * kv_heads) != width:
        raise ValueError(f"qkv width {width} is not (heads {heads} + 2 x kv_heads {kv_heads}) x an even head size")
    for name, table in (("cos", cos), ("sin", sin)):
        cl.check_tensor(name, table, dev, (qkv.dtype,))
        if table.shape != (b, t, d):
            raise ValueError(f"{name} must have shape {(b, t, d)} for qkv {tuple(qkv.shape)}, got {tuple(table.shape)}")
    cl.check_tensor("slots", slots, dev, (torch.int64,))
    if slots.shape != (t,):
        raise ValueError(f"slots must have shape ({t},), got {tuple(slots.shape)}")
    for name, cache in (("keys", keys), ("values", values)):
        cl.check_tensor(name, cache, dev, (qkv.dtype,))
        if cache.dim() != 4 or cache.shape[:2] != (b, kv_heads) or cache.shape[3] != d:
            raise ValueError(f"{name} must have shape ({b}, {kv_heads}, L, {d}), got {tuple(cache.shape)}")
    if keys.shape != values.shape:
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must have one shape")
    q = torch.empty((b, t, heads, d), dtype=qkv.dtype, device=dev)
    if b * t == 0:
        return q
    args = (cl.ptr(qkv), cl.ptr(cos), cl.ptr(sin), cl.ptr(slots), cl.ptr(q), cl.ptr(keys), cl.ptr(values),
            np.int32(t), np.int32(heads), np.int32(kv_heads), np.int32(d), np.int32(keys.shape[2]))
    opts = (f"-DROPE_BF16={int(qkv.dtype == torch.bfloat16)}", f"-DROPE_THREADS={THREADS}")
    fn = cl.function(dev.index, KERNEL_FILE, opts, "fq_rope_cache", 0)
    cl.launch(fn, (b * t, -(-width // THREADS), 1), (THREADS, 1, 1), args, 0, dev.index)
    return q
