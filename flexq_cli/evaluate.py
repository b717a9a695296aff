"""``flexq eval``: perplexity with the standard protocol, on a full-precision or a quantized model.

Protocol (GPTQ / SmoothQuant / FlexQ): the whole test text is tokenized at once; it is cut into non-overlapping
windows of ``seqlen`` tokens from the start (a short tail is dropped); each window is scored independently;
PPL = exp(mean next-token NLL over all scored tokens of all windows).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from . import ui
from .arch import spec_for_config
from .data import eval_windows, load_text, tokenize
from .loading import check_seqlen, default_dtype, load_fp_model, resolve_model
from .placement import DeviceMap


@dataclass(frozen=True)
class EvalConfig:
    data: str = "wikitext2"
    seqlen: int = 2048
    max_windows: int | None = None
    batch_size: int = 1

    def __post_init__(self):
        if self.seqlen < 2 or self.batch_size < 1 or (self.max_windows is not None and self.max_windows < 1):
            raise ValueError("seqlen >= 2, batch_size >= 1 and max_windows >= 1 are required")


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 1) -> tuple[float, float]:
    """(PPL, mean NLL) of ``model`` over (W, seqlen) windows."""
    from .placement import input_device

    device = input_device(model)
    total, count = 0.0, 0
    batches = windows.split(batch_size)
    for batch in ui.track(batches, "evaluating", total=len(batches)):
        batch = batch.to(device)
        logits = model(batch, use_cache=False).logits[:, :-1].float()
        targets = batch[:, 1:].to(logits.device)  # a spread model's head may sit on another device
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                reduction="sum")
        if not torch.isfinite(nll):
            raise FloatingPointError("the model produced NaN/Inf logits")
        total += nll.item()
        count += batch[:, 1:].numel()
    mean = total / count
    return math.exp(mean), mean


def load_for_eval(model_name: str, device: str, dtype: torch.dtype | None, backend: str,
                  device_map: DeviceMap | None = None, fuse: bool = False, decode_attention: bool = True):
    """(model, tokenizer, description) for a full-precision or a quantized model, on ``device`` or, with
    ``device_map``, loaded into host memory and dispatched over the map's devices (placement.py). ``fuse``:
    q/k/v and gate/up fused (fusion.py), before dispatching, so offloaded layers offload the fused weights;
    ``decode_attention``: as fusion.fuse_shared_inputs'."""
    ref = resolve_model(model_name)
    load_on = "cpu" if device_map is not None else device
    dtype = dtype or default_dtype("cuda" if device_map is not None and device_map.uses_cuda else device)
    if ref.kind == "quantized":
        from .quantize import load_quantized

        model, tokenizer, manifest = load_quantized(ref.path, device=load_on, dtype=dtype, backend=backend)
        quant = manifest.config["quant"]
        a8 = sum(1 for b in quant["act_bits_overrides"].values() if b == 8)
        label = f"W6A{quant['act_bits']}" + (f" ({a8} overrides)" if a8 else "")
        info = {"model": ref.name, "kind": "quantized", "quant": label, "source": manifest.source["model"]}
    else:
        model, tokenizer, _ = load_fp_model(ref, dtype, load_on)
        info = {"model": ref.name, "kind": "full precision", "quant": str(dtype).removeprefix("torch.")}
    return place(model, device_map, fuse, decode_attention), tokenizer, info


def place(model, device_map: DeviceMap | None, fuse: bool, decode_attention: bool = True):
    """Fuse (if asked), then dispatch over ``device_map`` (None: leave the model where it is)."""
    spec = spec_for_config(model.config)
    if fuse:
        from .fusion import fuse_shared_inputs

        fuse_shared_inputs(model, spec, decode_attention=decode_attention)
    if device_map is None:
        return model
    from .placement import dispatch, resolve

    return dispatch(model, resolve(model, spec, device_map))


def evaluate(model_name: str, cfg: EvalConfig, *, device: str = "cpu", dtype: torch.dtype | None = None,
             backend: str = "auto", device_map: DeviceMap | None = None) -> dict:
    text = load_text(cfg.data, "test")  # fail on a bad data name before the slow model load
    model, tokenizer, info = load_for_eval(model_name, device, dtype, backend, device_map)
    check_seqlen(model.config, cfg.seqlen)
    windows = eval_windows(tokenize(tokenizer, text), cfg.seqlen, cfg.max_windows)
    start = time.perf_counter()
    try:
        ppl, nll = perplexity(model, windows, cfg.batch_size)
    except FloatingPointError as exc:
        from .errors import NonFiniteError

        raise NonFiniteError(f"{model_name}: {exc}", "try --dtype float32 or bfloat16") from exc
    return {**info, "data": cfg.data, "seqlen": cfg.seqlen, "windows": int(windows.shape[0]),
            "ppl": ppl, "nll": nll, "seconds": round(time.perf_counter() - start, 2),
            "device": device if device_map is None else f"device map {device_map}"}
