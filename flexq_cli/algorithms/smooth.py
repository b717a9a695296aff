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
"""

from __future__ import annotations

import torch

from ..arch import decoder_layers

EPS = 1e-5


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
            if group.norm is not None:
                s = smoothing_factors(amax, [lin.weight for lin in linears], alpha)
                fold_into_norm(layer.get_submodule(group.norm), linears, s)
            else:
                prev = layer.get_submodule(group.prev)
                s = _prev_factors(prev, linears, amax, alpha, model.config)
                fold_into_linear(prev, linears, s, s[channel_map(prev.out_features, amax.numel(), model.config)])
            spread.setdefault(group.linears[0].rsplit(".", 1)[-1], []).append((s.max() / s.min()).log2().item())
    return {k: sum(v) / len(v) for k, v in spread.items()}


def _prev_factors(prev, linears, amax: torch.Tensor, alpha: float, config) -> torch.Tensor:
    """(prev_out,) factors: input and weight maxima taken over every input channel that reads a prev channel."""
    cmap = channel_map(prev.out_features, amax.numel(), config).to(amax.device)
    n = prev.out_features
    a = torch.zeros(n, device=amax.device).scatter_reduce_(0, cmap, amax.float(), "amax")
    wcol = torch.cat([lin.weight.detach().float().abs() for lin in linears]).amax(dim=0)
    wmax = torch.zeros(n, device=amax.device).scatter_reduce_(0, cmap, wcol, "amax")
    return smoothing_factors(a, [wmax[None]], alpha)
