"""Glue: apply the accuracy algorithms of a QuantConfig to a float model, layer by layer.

``prepare_quantized`` rotates (rotate.py) and smooths (smooth.py) the float model when the config asks for it
(the online input rotations last, after the smoothing),
then replaces every decoder linear by the module that ``make_module(name, linear, codes, scales)`` builds from
the chosen INT6 codes and scales: round to nearest, the clip search (clip.py) or GPTQ (gptq.py). With
``smooth_search`` the smoothing is chosen per group inside the layer-by-layer pass (``smooth.search_layer``), on
each layer's inputs.

Algorithms that need calibration activations run sequentially: the calibration samples' inputs to decoder
layer 0 are cached once; for each layer, hooks accumulate the Hessian X^T X of every linear group's input
(one per group: its linears share the input), the layer's weights are quantized, and the layer is run again
with the quantized weights and fake-quantized activations to produce the next layer's inputs. So each layer
is calibrated on what its quantized predecessors really feed it, and memory holds one (samples, seqlen,
hidden) activation set and one layer's Hessians, whatever the depth.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch

from .. import ui
from ..arch import decoder_layers, linear_names
from ..config import QuantConfig
from ..modules import SimQuantLinear, replace_module
from ..primitives import pad_k, padded_k, quantize_weight, quantize_with_scales
from .gptq import Hessian, choose_scales, gptq_quantize
from .rotate import rotate_inputs_online, rotate_model
from .smooth import SEARCH_TOKENS, search_layer, smooth_model
from .tune import tune_norms

MakeModule = Callable[[str, torch.nn.Linear, torch.Tensor, torch.Tensor], torch.nn.Module]


def weight_codes(linear: torch.nn.Linear, config: QuantConfig, h: torch.Tensor | None = None):
    """((N, Kp) int8 codes, (N, Kp / g) float16 scales) of one linear under ``config``; ``h`` is the (Kp, Kp)
    Hessian of its input (needed by GPTQ and the output clip search)."""
    kp = padded_k(linear.in_features, config.weight_group_size, config.act_group_size)
    w = pad_k(linear.weight.detach().float(), kp)
    bits, gs = config.weight_bits, config.weight_group_size
    if config.gptq:
        return gptq_quantize(w, h, bits, gs, damp=config.gptq_damp, act_order=config.gptq_act_order,
                             clip=config.weight_clip)
    if config.weight_clip == "none":
        return quantize_weight(w, bits, gs)
    scales = choose_scales(w, bits, gs, config.weight_clip, h)
    return quantize_with_scales(w, scales, bits, gs), scales


def prepare_quantized(model, spec, config: QuantConfig, make_module: MakeModule, calib: dict | None = None,
                      samples: int | None = None) -> dict:
    """Smooth (if asked) and replace every decoder linear of ``model`` in place. ``calib``: the tensors of a
    calibration artifact (input_ids and per-linear absmax), required when ``config.needs_calibration``.
    Returns a summary (seconds per step, smoothing spread) for the manifest."""
    if config.needs_calibration and calib is None:
        raise ValueError(f"this config ({', '.join(config.calibration_users())}) needs calibration data")
    summary, start = {}, time.perf_counter()
    teacher = copy.deepcopy(model) if config.tune_norms else None
    if config.rotate:
        rotate_model(model, spec)
        summary["rotate_seconds"] = round(time.perf_counter() - start, 2)
    if config.smooth_alpha is not None:
        absmax = {name: calib[f"{name}.absmax"] for name in linear_names(model, spec)}
        summary["smooth_log2_spread"] = smooth_model(model, spec, absmax, config.smooth_alpha)
        summary["smooth_seconds"] = round(time.perf_counter() - start, 2)
    if config.online_rotate:
        summary["online_rotated"] = rotate_inputs_online(model, spec, config)
    start = time.perf_counter()
    if config.needs_activations:
        ids = calib["input_ids"][:samples].long()
        chosen: dict[str, list] = {}
        quantize_sequential(model, spec, config, ids, make_module, chosen)
        summary["calibration_tokens"] = int(ids.numel())
        if config.smooth_search:
            summary["smooth_search"] = search_summary(chosen)
    else:
        for name in ui.track(linear_names(model, spec), "quantizing"):
            linear = model.get_submodule(name)
            replace_module(model, name, make_module(name, linear, *weight_codes(linear, config)))
    summary["weights_seconds"] = round(time.perf_counter() - start, 2)
    if config.tune_norms:
        start = time.perf_counter()
        ids = calib["input_ids"][:samples][: config.tune_samples or None].long()
        summary["tune_norms"] = tune_norms(model, teacher, spec, ids, config.tune_norms)
        summary["tune_tokens"] = int(ids.numel())
        summary["tune_seconds"] = round(time.perf_counter() - start, 2)
    return summary


class _Stop(Exception):
    """Raised by the layer-0 hook: nothing past the first decoder layer's input is needed."""


@torch.no_grad()
def first_layer_inputs(model, spec, input_ids: torch.Tensor) -> list[tuple[torch.Tensor, dict]]:
    """(hidden_states, layer kwargs) of decoder layer 0 for each (seqlen,) sample of ``input_ids``."""
    store, device = [], next(model.parameters()).device

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        store.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Stop

    handle = decoder_layers(model, spec)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for row in input_ids:
            try:
                model(row[None].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return store


def _run_layer(layer, inputs: list[tuple[torch.Tensor, dict]]) -> list[tuple[torch.Tensor, dict]]:
    outs = []
    for hidden, kwargs in inputs:
        out = layer(hidden, **kwargs)
        outs.append((out[0] if isinstance(out, tuple) else out, kwargs))
    return outs


def layer_hessians(layer, spec, config: QuantConfig, inputs,
                   samples: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Group's first linear (relative name) -> (Kp, Kp) Hessian of the group's input over all samples. With
    ``samples`` (a dict, filled in place): the same keys -> (T, K) float32 input tokens for the smoothing search,
    about ``SEARCH_TOKENS`` in all, evenly spaced within each calibration sample."""
    acc, handles = {}, []
    per_sample = -(-SEARCH_TOKENS // max(1, len(inputs)))
    kept: dict[str, list[torch.Tensor]] = {}

    def hook(module, args, h, kp, rel):
        h.add(pad_k(args[0], kp))
        if samples is not None:
            x = args[0].reshape(-1, args[0].shape[-1])
            step = max(1, x.shape[0] // per_sample)
            kept.setdefault(rel, []).append(x[::step][:per_sample].float())

    for group in spec.groups:
        rel = group.linears[0]
        lin = layer.get_submodule(rel)
        kp = padded_k(lin.in_features, config.weight_group_size, config.act_group_size)
        acc[rel] = hess = Hessian(kp, lin.weight.device)
        handles.append(lin.register_forward_pre_hook(lambda m, args, h=hess, kp=kp, rel=rel: hook(m, args, h, kp, rel)))
    try:
        _run_layer(layer, inputs)
    finally:
        for handle in handles:
            handle.remove()
    if samples is not None:
        samples.update({rel: torch.cat(xs) for rel, xs in kept.items()})
    return {rel: h.h for rel, h in acc.items()}


def layer_statistics(layer, spec, config: QuantConfig, model_config, prefix: str, inputs,
                     summary: dict | None = None) -> dict[str, torch.Tensor]:
    """``layer_hessians``, after choosing and folding the layer's smoothing when ``config.smooth_search`` (the
    Hessians then describe the smoothed inputs). ``summary``: group kind -> list of chosen alphas, appended to."""
    if not config.smooth_search:
        return layer_hessians(layer, spec, config, inputs)
    samples: dict[str, torch.Tensor] = {}
    hessians = layer_hessians(layer, spec, config, inputs, samples)
    chosen = search_layer(layer, spec, config, model_config, prefix, samples, hessians)
    if summary is not None:
        for rel, alpha in chosen.items():
            summary.setdefault(rel.rsplit(".", 1)[-1], []).append(alpha)
    return hessians


def search_summary(chosen: dict[str, list]) -> dict[str, dict]:
    """Per group kind: how many layers kept no smoothing, and the mean alpha of the others (for the manifest)."""
    out = {}
    for kind, alphas in chosen.items():
        used = [a for a in alphas if a is not None]
        out[kind] = {"none": len(alphas) - len(used), "mean_alpha": round(sum(used) / len(used), 3) if used else None}
    return out


@torch.no_grad()
def quantize_sequential(model, spec, config: QuantConfig, input_ids: torch.Tensor, make_module: MakeModule,
                        chosen: dict | None = None) -> None:
    """Quantize decoder layer after decoder layer, each on the outputs of its already quantized predecessors.
    ``chosen``: filled with the smoothing search's alphas (``layer_statistics``)."""
    inputs = first_layer_inputs(model, spec, input_ids)
    layers = decoder_layers(model, spec)
    for i, layer in ui.track(list(enumerate(layers)), "quantizing layers"):
        hessians = layer_statistics(layer, spec, config, model.config, f"{spec.layers}.{i}.", inputs, chosen)
        finals = {}
        for group in spec.groups:
            for rel in group.linears:
                name, linear = f"{spec.layers}.{i}.{rel}", layer.get_submodule(rel)
                codes, scales = weight_codes(linear, config, hessians[group.linears[0]])
                finals[rel] = make_module(name, linear, codes, scales)
                replace_module(layer, rel, SimQuantLinear(linear, config, config.act_bits_for(name), codes, scales))
        del hessians
        if i + 1 < len(layers):
            inputs = _run_layer(layer, inputs)
        for rel, module in finals.items():
            replace_module(layer, rel, module)
