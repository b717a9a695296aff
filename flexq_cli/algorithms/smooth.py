"""SmoothQuant-style outlier migration, folded into the float model so that no runtime op is added.

For a group of linears that read the same input X (K channels), per-channel factors
    s_k = max|X_k|^alpha / max|W_:,k|^(1 - alpha)      (max over tokens; over the rows of every linear of the group)
divide the input (X / s) and multiply the weight columns (W * s): X W^T is unchanged, while the activation
outliers that a 6-bit per-token scale cannot hold move into the weights. The division is folded where X is
produced, so the model stays the same function:
  * into the RMSNorm weight that feeds q/k/v and gate/up (norm(x) * gamma / s);
  * into the rows of the previous linear: v_proj -> o_proj (attention is linear in V; with grouped-query
    attention one factor per v channel, shared by the query heads that read it) and up_proj -> down_proj
    (down's input is act(gate) * up, linear in up).
The maxima of X come from ``flexq calibrate`` (``<linear>.absmax``), measured on the original model; each fold
leaves every other group's input unchanged, so those statistics stay valid whatever the order of the folds.

``smooth_search`` (``search_layer``) chooses the factors per group instead of one alpha for the whole model, as
AWQ searches its scales: during the layer-by-layer pass, every candidate (no smoothing, or the factors above for
alpha in ``SEARCH_ALPHAS``) is tried on a sample of the group's real calibration inputs, with the weights rounded
to nearest and the activations fake-quantized at each linear's bits, and the candidate whose group output is
closest to the float output (squared error) is folded. No smoothing is a candidate, so on that sample the chosen
factors never do worse than none.
"""

from __future__ import annotations

import torch

from ..arch import decoder_layers
from ..primitives import dequantize, fake_quantize_activation, pad_k, padded_k, quantize_weight

EPS = 1e-5
SEARCH_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0, 0.1, ..., 1.0 (plus "no smoothing")
SEARCH_TOKENS = 1024  # calibration tokens per group the search measures the output error on


def smoothing_factors(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """(K,) input maxima and weights (N_i, K) of the linears sharing the input -> (K,) float32 factors s."""
    a = act_absmax.float()
    wmax = torch.cat([w.detach().float().abs() for w in weights]).amax(dim=0)
    s = a.clamp(min=EPS).pow(alpha) / wmax.clamp(min=EPS).pow(1.0 - alpha)
    return torch.where((a > 0) & (wmax > 0), s, torch.ones_like(s))


def fold_into_norm(norm: torch.nn.Module, linears: list[torch.nn.Linear], s: torch.Tensor) -> None:
    """norm.weight / s and every linear's columns * s: the product is unchanged."""
    norm.weight.data = (norm.weight.data.float() / s).to(norm.weight.dtype)
    for lin in linears:
        lin.weight.data = (lin.weight.data.float() * s).to(lin.weight.dtype)


def fold_into_linear(prev: torch.nn.Linear, linears: list[torch.nn.Linear], s_prev: torch.Tensor,
                     s_in: torch.Tensor) -> None:
    """prev's output rows (and bias) / s_prev and the readers' columns * s_in (s_in: s_prev as each input
    channel sees it, which differs only under grouped-query attention)."""
    prev.weight.data = (prev.weight.data.float() / s_prev[:, None]).to(prev.weight.dtype)
    if prev.bias is not None:
        prev.bias.data = (prev.bias.data.float() / s_prev).to(prev.bias.dtype)
    for lin in linears:
        lin.weight.data = (lin.weight.data.float() * s_in).to(lin.weight.dtype)


def channel_map(prev_out: int, k: int, config) -> torch.Tensor:
    """(K,) index of the prev-output channel that each of the K input channels reads. Identity when the sizes
    agree; under grouped-query attention input channel (head h, dim d) reads v channel (h // rep, d)."""
    if prev_out == k:
        return torch.arange(k)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or k // heads
    rep = heads // config.num_key_value_heads
    if heads * head_dim != k or prev_out * rep != k:
        raise ValueError(f"cannot map {k} input channels onto {prev_out} outputs of the previous linear")
    h, d = torch.arange(k) // head_dim, torch.arange(k) % head_dim
    return (h // rep) * head_dim + d


@torch.no_grad()
def smooth_model(model, spec, absmax: dict[str, torch.Tensor], alpha: float) -> dict[str, float]:
    """Fold the factors of every linear group of every decoder layer into ``model``, in place.

    ``absmax``: full linear name -> (K,) calibration input maxima. Returns per group kind the mean of
    log2(max s / min s), a summary for the manifest (how far the migration went).
    """
    spread: dict[str, list[float]] = {}
    for i, layer in enumerate(decoder_layers(model, spec)):
        for group in spec.groups:
            if group.norm is None and group.prev is None:
                continue
            linears = [layer.get_submodule(rel) for rel in group.linears]
            amax = absmax[f"{spec.layers}.{i}.{group.linears[0]}"].to(linears[0].weight.device)
            s, s_in = group_factors(layer, group, linears, amax, alpha, model.config)
            fold_group(layer, group, linears, s, s_in)
            spread.setdefault(group.linears[0].rsplit(".", 1)[-1], []).append((s.max() / s.min()).log2().item())
    return {k: sum(v) / len(v) for k, v in spread.items()}


def group_factors(layer, group, linears, amax: torch.Tensor, alpha: float,
                  config) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, s_in) of one group of ``layer``: its factors (over the norm's channels, or over the previous linear's
    output channels) and the same as each of the group's K input channels sees them (they differ only under
    grouped-query attention). ``amax``: (K,) maxima of the group's input; ``config``: the model's."""
    if group.norm is not None:
        s = smoothing_factors(amax, [lin.weight for lin in linears], alpha)
        return s, s
    prev = layer.get_submodule(group.prev)
    s = _prev_factors(prev, linears, amax, alpha, config)
    return s, s[channel_map(prev.out_features, amax.numel(), config).to(s.device)]


def fold_group(layer, group, linears, s: torch.Tensor, s_in: torch.Tensor) -> None:
    """Fold ``group_factors``' result into ``layer``: into the norm's weight, or into the previous linear's rows."""
    if group.norm is not None:
        fold_into_norm(layer.get_submodule(group.norm), linears, s)
    else:
        fold_into_linear(layer.get_submodule(group.prev), linears, s, s_in)


def _prev_factors(prev, linears, amax: torch.Tensor, alpha: float, config) -> torch.Tensor:
    """(prev_out,) factors: input and weight maxima taken over every input channel that reads a prev channel."""
    cmap = channel_map(prev.out_features, amax.numel(), config).to(amax.device)
    n = prev.out_features
    a = torch.zeros(n, device=amax.device).scatter_reduce_(0, cmap, amax.float(), "amax")
    wcol = torch.cat([lin.weight.detach().float().abs() for lin in linears]).amax(dim=0)
    wmax = torch.zeros(n, device=amax.device).scatter_reduce_(0, cmap, wcol, "amax")
    return smoothing_factors(a, [wmax[None]], alpha)


def group_output_error(x: torch.Tensor, linears: list[torch.nn.Linear], bits: list[int], s: torch.Tensor | None,
                       config, refs: list[torch.Tensor] | None = None) -> float:
    """Squared error of the group's output on (T, K) float32 inputs ``x`` when the input is divided by ``s`` (None:
    1) and each linear's columns multiplied by it, its weights rounded to nearest and its input fake-quantized at
    its activation bits, against the float output x W^T (``refs``: those outputs, when already computed)."""
    kp = padded_k(x.shape[1], config.weight_group_size, config.act_group_size)
    xs = pad_k(x if s is None else x / s, kp)
    quantized_inputs: dict[int, torch.Tensor] = {}
    refs = refs or [x @ lin.weight.detach().float().T for lin in linears]
    err = 0.0
    for lin, b, ref in zip(linears, bits, refs):
        w = lin.weight.detach().float()
        ws = pad_k(w if s is None else w * s, kp)
        q, scales = quantize_weight(ws, config.weight_bits, config.weight_group_size)
        if b not in quantized_inputs:
            quantized_inputs[b] = fake_quantize_activation(xs, b, config.act_group_size)
        out = quantized_inputs[b] @ dequantize(q, scales, config.weight_group_size).T
        err += (out - ref).square().sum().item()
    return err


def search_layer(layer, spec, config, model_config, prefix: str, inputs: dict[str, torch.Tensor],
                 hessians: dict[str, torch.Tensor] | None = None) -> dict[str, float | None]:
    """Choose and fold the factors of every group of one decoder layer (``smooth_search``), in place.

    ``config``: the QuantConfig; ``model_config``: the model's (heads, for grouped-query attention); ``prefix``: the
    layer's full name and a dot. ``inputs``: group's first linear (relative name) -> (T, K) float32 sample of the
    group's input, taken from the float layer before any fold. Groups run in ``spec.groups`` order; a fold
    changes only the input of the group it scales, and that group's sample and Hessian (``hessians``, same keys,
    (Kp, Kp)) are rescaled to match (X / s, and H / s s^T), so GPTQ and the output clip search that follow see
    the smoothed inputs. Returns the chosen alpha per group (None: no smoothing).
    """
    chosen: dict[str, float | None] = {}
    for group in spec.groups:
        if group.norm is None and group.prev is None:
            continue
        key = group.linears[0]
        x = inputs[key]
        linears = [layer.get_submodule(rel) for rel in group.linears]
        bits = [config.act_bits_for(prefix + rel) for rel in group.linears]
        amax = x.abs().amax(dim=0)
        refs = [x @ lin.weight.detach().float().T for lin in linears]  # float outputs: one for all candidates
        best_err, best = group_output_error(x, linears, bits, None, config, refs), (None, None, None)
        for alpha in SEARCH_ALPHAS:
            s, s_in = group_factors(layer, group, linears, amax, alpha, model_config)
            err = group_output_error(x, linears, bits, s_in, config, refs)
            if err < best_err:
                best_err, best = err, (alpha, s, s_in)
        alpha, s, s_in = best
        chosen[key] = alpha
        if alpha is None:
            continue
        fold_group(layer, group, linears, s, s_in)
        inputs[key] = x / s_in
        if hessians is not None and key in hessians:
            h = hessians[key]
            sp = torch.ones(h.shape[0], device=h.device)
            sp[: s_in.numel()] = s_in
            hessians[key] = h / (sp[:, None] * sp[None, :])
    return chosen
