"""Decode attention in one CUDA kernel (kernels/attention.cu): one query token per sequence over generation's static
KV cache, optionally with o_proj's INT8 activation quantize done by the same launch.

    out, packed = decode_attention_cuda(q, keys, values, mask, scale, quant_bits=8)

Used by ``modules.KernelAttention`` for decode steps where it also makes o_proj's pack or is faster alone
(``faster_alone``), unless made with ``decode_kernel=False`` (``--no-attn-kernel``); prefill and the rest keep
transformers' attention function.
The result is softmax(q k^T * scale + mask) v in float32 with one rounding to 16 bits: not the bits of PyTorch's
SDPA (cuDNN and flash attention order their sums differently; tests/test_attention_gpu.py states the tolerance).
Arguments are checked here (ValueError naming what is wrong); the launch goes on PyTorch's current stream, so it
works under CUDA graph capture.
"""

from __future__ import annotations

import torch

from . import cuda_launch as cl

KERNEL_FILE = "attention.cu"
WARPS = 4  # AT_WARPS: warps per CTA
MAX_CHUNK = 512  # AT_MAX_CHUNK: keys per CTA at most
TARGET_CTAS = 264  # two per SM of an H100: the keys of few (sequence, head) pairs are split over CTAs up to this
MIN_CHUNK = 16  # keys per CTA at least
HEAD_DIMS = (64, 128)

_workspace: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # device -> (partials float32, counters int32)
# Buffers replaced by larger ones stay allocated: a CUDA graph captured with them still writes there when replayed
# (longer views split the keys over more CTAs; a generation sizes them at its longest view before it captures, but
# another decoder's graphs may still be alive).
_retired: list[tuple[torch.Tensor, torch.Tensor]] = []


def faster_alone(pairs: int) -> bool:
    """Whether the kernel beats PyTorch's SDPA (cuDNN) for ``pairs`` (sequence, head) pairs without the fused quantize:
    on the H100 only where every pair gets one CTA (7B shape, FP16 decode, one process, tok/s: batch 16 2457 against
    2406; batch 1 171.0 against 173.9 and batch 4 669 against 676-679, where the keys are split over CTAs)."""
    return pairs >= TARGET_CTAS


def split(pairs: int, keys: int) -> tuple[int, int]:
    """(CTAs per (sequence, head), keys per CTA) for ``pairs`` (sequence, head) pairs over ``keys`` keys."""
    s = max(1, min(-(-TARGET_CTAS // pairs), -(-keys // MIN_CHUNK)))
    chunk = min(MAX_CHUNK, max(1, -(-keys // s)))
    return -(-keys // chunk), chunk


def _buffers(device: torch.device, part: int, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split partials and arrival counters (zero between launches: the last CTA of a pair resets its own), grown
    as needed outside graph capture (the old ones kept: ``_retired``); during a capture the buffers of the eager
    warm-up step are reused."""
    have = _workspace.get(device.index)
    if have is None or have[0].numel() < part or have[1].numel() < pairs:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("decode attention needs larger split buffers inside a CUDA graph capture: run the same "
                               "step once eagerly before capturing it")
        old = (0, 0) if have is None else (have[0].numel(), have[1].numel())
        if have is not None:
            _retired.append(have)
        have = (torch.empty(max(part, old[0]), dtype=torch.float32, device=device),
                torch.zeros(max(pairs, old[1]), dtype=torch.int32, device=device))
        _workspace[device.index] = have
    return have


def decode_attention_cuda(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                          scale: float, *, quant_bits: int | None = None):
    """(out, packed): out (B, 1, H * D) of q's dtype; packed = (codes (B, H * D) int8, scales (B, H) float32) in
    ``int8_kernel.quantize_activations``' layout and bits for ``quant_bits``-bit activations (act groups of 128, so
    D must be 128), or None without ``quant_bits``.

    q: (B, H, 1, D) float16/bfloat16 contiguous; keys, values: (B, Hkv, L, D) of q's dtype, views of one cache buffer
    each (unit stride along D, D along the keys, equal strides), H a multiple of Hkv; mask: None or additive
    (B, 1, 1, L) of q's dtype with unit stride along the keys; D 64 or 128.
    """
    import numpy as np

    cl.check_tensor("q", q, None, cl.ACTIVATION_DTYPES)
    dev = q.device
    if q.dim() != 4 or q.shape[2] != 1 or q.shape[3] not in HEAD_DIMS:
        raise ValueError(f"q must be (batch, heads, 1, D) with D in {HEAD_DIMS}, got shape {tuple(q.shape)}")
    b, h, _, d = q.shape
    for name, t in (("keys", keys), ("values", values)):
        if not isinstance(t, torch.Tensor) or t.device != dev or t.dtype != q.dtype:
            raise ValueError(f"{name} must be a {q.dtype} tensor on {dev}")
        if t.dim() != 4 or t.shape[0] != b or t.shape[3] != d or t.stride(3) != 1 or t.stride(2) != d:
            raise ValueError(f"{name} must be ({b}, kv_heads, L, {d}) with rows of {d} contiguous values, got shape "
                             f"{tuple(t.shape)} strides {t.stride()}")
        if t.data_ptr() % 16:
            raise ValueError(f"{name} must start 16-byte aligned")
    if keys.shape != values.shape or keys.stride() != values.stride():
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must have one shape and strides")
    hkv, n = keys.shape[1], keys.shape[2]
    if hkv == 0 or h % hkv:
        raise ValueError(f"{h} query heads are not a multiple of {hkv} kv heads")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.device != dev or mask.dtype != q.dtype:
            raise ValueError(f"mask must be an additive {q.dtype} tensor on {dev}")
        if mask.dim() != 4 or mask.shape[0] not in (1, b) or mask.shape[1:3] != (1, 1) or mask.shape[3] != n \
                or mask.stride(3) != 1:
            raise ValueError(f"mask must be ({b}, 1, 1, {n}) with unit stride along the keys, got shape "
                             f"{tuple(mask.shape)}")
    if quant_bits is not None and (d != 128 or quant_bits not in (6, 8)):
        raise ValueError(f"the fused quantize needs D = 128 and 6 or 8 bits, got D = {d}, {quant_bits} bits")
    if n == 0 and b * h:
        raise ValueError("attention over zero keys")
    out = torch.empty((b, 1, h * d), dtype=q.dtype, device=dev)
    packed = None
    if quant_bits is not None:
        packed = (torch.empty((b, h * d), dtype=torch.int8, device=dev),
                  torch.empty((b, h), dtype=torch.float32, device=dev))
    if b * h == 0:
        return out, packed
    s, chunk = split(b * h, n)
    part, counters = _buffers(dev, b * h * s * (d + 2) if s > 1 else 0, b * h)
    mask_b = 0 if mask is None or mask.shape[0] == 1 else mask.stride(0)
    args = (cl.ptr(q), cl.ptr(keys), cl.ptr(values), cl.ptr(mask), cl.ptr(out), cl.ptr(part), cl.ptr(counters),
            cl.ptr(packed[0] if packed else None), cl.ptr(packed[1] if packed else None),
            np.int32(h), np.int32(hkv), np.int32(n), np.int32(chunk), np.uint64(keys.stride(0)),
            np.uint64(keys.stride(1)), np.uint64(mask_b), np.float32(scale))
    opts = (f"-DAT_D={d}", f"-DAT_WARPS={WARPS}", f"-DAT_BF16={int(q.dtype == torch.bfloat16)}",
            f"-DAT_QUANT={int(packed is not None)}",
            f"-DAT_QMAX={(1 << (quant_bits - 1)) - 1 if quant_bits else 127}", f"-DAT_MAX_CHUNK={MAX_CHUNK}")
    fn = cl.function(dev.index, KERNEL_FILE, opts, "fq_decode_attn", 0)
    cl.launch(fn, (b * h, s, 1), (32 * WARPS, 1, 1), args, 0, dev.index)
    return out, packed
