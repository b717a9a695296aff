"""End-to-end tuning of the RMSNorm weights of a quantized model against the float model (norm tweaking).

After the weights are quantized, each norm weight (per channel, folded into no linear: it stays a 16-bit tensor
outside the kernels) is trained to bring the quantized model's next-token distribution back to the float
model's: loss KL(p_float || p_quantized) over the calibration tokens, Adam, the INT6 weights fixed and the
activation rounding passed straight through. The packed format and the integer numerics do not change.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ui
from ..arch import decoder_layers
from ..modules import QuantLinear, SimQuantLinear, dequantize_rows, replace_module
from ..primitives import block_rotate, fake_quantize_activation, pad_k


class _Trainable(nn.Module):
    """A quantized linear as a differentiable float module: dequantized weight, activations fake-quantized on the
    forward pass and passed straight through on the backward pass."""

    def __init__(self, module: nn.Module):
        super().__init__()
        if isinstance(module, QuantLinear):
            w, group = module.dequantized_weight(), module.act_group_size
        else:  # SimQuantLinear: its float weight, or its codes when lazy
            w = module.weight if module.weight is not None else dequantize_rows(
                module.codes, module.code_scales, module.config.weight_group_size)
            w, group = w[:, : module.in_features], module.config.act_group_size
        self.weight, self.bias, self.rotation = w.float(), module.bias, module.rotation
        self.act_bits, self.group, self.kp, self.k = module.act_bits, group, module.padded_in, module.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if self.rotation is None else block_rotate(x.float(), self.rotation)
        if self.act_bits is not None:
            xp = pad_k(xf, self.kp)
            xq = fake_quantize_activation(xp.detach(), self.act_bits, self.group)[..., : self.k]
            xf = xf + (xq - xf).detach()
        y = xf @ self.weight.T
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


def norm_weights(model, spec) -> list[nn.Parameter]:
    norms = {layer.get_submodule(g.norm) for layer in decoder_layers(model, spec) for g in spec.groups if g.norm}
    return [m.weight for m in [*norms, model.get_submodule(spec.final_norm)]]


def tune_norms(model, teacher, spec, input_ids: torch.Tensor, epochs: int, lr: float = 5e-4) -> dict:
    """Train ``model``'s RMSNorm weights in place for ``epochs`` passes over ``input_ids`` (samples, seqlen) to
    match ``teacher``'s (the float model's) next-token distributions, one Adam step per sample. Returns the mean
    KL(teacher || model) of each epoch, as measured by its steps."""
    device = next(model.parameters()).device
    swapped = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, (QuantLinear, SimQuantLinear)):
            swapped[name] = module
            replace_module(model, name, _Trainable(module))
    params = norm_weights(model, spec)
    for p in model.parameters():  # only the norms learn
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    sums = [0.0] * epochs
    try:
        steps = [(epoch, row) for epoch in range(epochs) for row in input_ids]
        for epoch, row in ui.track(steps, "tuning the norms"):
            ids = row[None].to(device)
            with torch.no_grad():
                target = torch.log_softmax(teacher(ids, use_cache=False).logits.float(), dim=-1)
            with torch.enable_grad():  # quantize runs under no_grad
                logp = torch.log_softmax(model(ids, use_cache=False).logits.float(), dim=-1)
                loss = (target.exp() * (target - logp)).sum(-1).mean()
                opt.zero_grad()
                loss.backward()
            opt.step()
            sums[epoch] += loss.item()
    finally:
        for p in params:
            p.requires_grad_(False)
        for name, module in swapped.items():
            replace_module(model, name, module)
    return {"kl_per_epoch": [float(f"{total / len(input_ids):.4g}") for total in sums]}
