"""Fuse linears that read the same input (q/k/v; gate/up) into one GEMM, and each RMSNorm into one kernel that
also quantizes and packs for the fused quantized GEMM after it, for inference.

Each member is replaced by a ``SharedOutputSlice`` that asks one fused layer for the output of the
whole group and returns its own columns. The group's GEMM (and its activation quantize-and-pack) runs once per
input tensor: the first member's call computes it, the others find the same input object and reuse the result.
Columns are independent in the W6Ax numerics (per-token activation scales, per-row weight scales), so a fused
quantized layer gives exactly the bits the separate layers give (16-bit ones: the same math, another GEMM
shape, so possibly other float rounding). Which linears share an input comes from arch.py.

The RMSNorms (the groups' norms and the final one) become ``modules.KernelRMSNorm``: on CUDA one launch in
place of HF's seven elementwise kernels, computing ``primitives.rms_norm`` (HF's formula in a fixed summation
order, within float32 rounding of it), and for a fused quantized group also that group's activation
quantize-and-pack, which the group's GEMM then skips. The MLP over a fused gate/up becomes
``modules.KernelGatedMLP``: the SiLU product (HF's bits) one launch that also packs for down_proj. The attention
over a fused q/k/v becomes ``modules.KernelAttention``: rotary embedding and static-cache write one launch (HF's
bits). Each decoder layer's two residual adds move into the norm launch that reads their sum
(``fuse_residual_adds``: the norm after attention adds, and the next layer's input norm, made at the end of
the layer, adds the MLP's output; HF's bits). On the CPU all of them keep HF's formulas. FP16 models get the
same kernels (where CuPy can run them, without the packs), so an FP16 baseline keeps the same treatment.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .arch import decoder_layers
from .cuda_launch import available
from .modules import KernelAttention, KernelGatedMLP, KernelRMSNorm, QuantLinear, replace_module
from .norm_kernel import launch_shape
from .packing import ROW_GROUP, group_rows, ungroup_rows


class _SharedOutput:
    """Remembers the last input object and its output, so group members reading one input share one GEMM."""

    _last = None

    def output_for(self, x: torch.Tensor) -> torch.Tensor:
        if self._last is None or self._last[0] is not x:
            self._last = (x, self(x))
        return self._last[1]


class FusedLinear(_SharedOutput, nn.Linear):
    """16-bit linears fused the same way, so an FP16 baseline gets the same treatment."""

    @classmethod
    def concat(cls, members: list[nn.Linear]) -> "FusedLinear":
        w = members[0].weight
        fused = cls(w.shape[1], sum(m.out_features for m in members), bias=members[0].bias is not None,
                    device="meta", dtype=w.dtype)
        fused.weight = nn.Parameter(torch.cat([m.weight for m in members]), requires_grad=False)
        if fused.bias is not None:
            fused.bias = nn.Parameter(torch.cat([m.bias for m in members]), requires_grad=False)
        return fused


class FusedQuantLinear(_SharedOutput, QuantLinear):
    """A QuantLinear whose rows are the concatenated rows of several."""

    @classmethod
    def concat(cls, members: list[QuantLinear]) -> "FusedQuantLinear":
        first = members[0]
        has_bias = any(m.bias is not None for m in members)
        bias_dtype = next((m.bias.dtype for m in members if m.bias is not None), torch.float16)
        fused = cls(first.in_features, sum(m.out_features for m in members), bias=has_bias, act_bits=first.act_bits,
                    weight_group_size=first.weight_group_size, act_group_size=first.act_group_size,
                    dtype=bias_dtype, device="meta", rotate_input=first.rotation is not None)
        fused.rotation = first.rotation
        if all(m.out_features % ROW_GROUP == 0 for m in members[:-1]):  # whole 16-row groups: the layout concatenates
            fused.qweight = torch.cat([m.qweight for m in members])
        else:
            fused.qweight = group_rows(torch.cat([ungroup_rows(m.qweight) for m in members]))
        fused.scales = torch.cat([m.scales for m in members])
        if has_bias:
            fused.bias = torch.cat([m.bias if m.bias is not None else torch.zeros(m.out_features, dtype=bias_dtype,
                                                                                   device=m.qweight.device)
                                    for m in members])
        fused.backend = first.backend
        return fused


class SharedOutputSlice(nn.Module):
    """Stands in for one member of a fused group: columns [start, stop) of the group's output. The group's last
    member drops the fused layer's reference to that output, so no layer keeps its output alive after use."""

    def __init__(self, fused: _SharedOutput, start: int, stop: int, last: bool):
        super().__init__()
        self.fused = [fused]  # a list, so the shared module is not registered once per member
        self.start, self.stop, self.last = start, stop, last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fused[0].output_for(x)[..., self.start:self.stop]
        if self.last:
            self.fused[0]._last = None
        return y


def _fused_class(members: list[nn.Module]):
    """FusedQuantLinear or FusedLinear when every member can join one GEMM, else None."""
    if len(members) < 2:
        return None
    if all(type(m) is QuantLinear for m in members):
        keys = {(m.in_features, m.act_bits, m.weight_group_size, m.act_group_size, m.backend) for m in members}
        rotations = [m.rotation for m in members]
        same_rotation = all(r is None for r in rotations) or all(
            r is not None and torch.equal(r, rotations[0]) for r in rotations)
        return FusedQuantLinear if len(keys) == 1 and same_rotation else None
    if all(type(m) is nn.Linear for m in members):
        keys = {(m.in_features, m.weight.dtype, m.bias is None) for m in members}
        return FusedLinear if len(keys) == 1 else None
    return None


def fuse_shared_inputs(model: nn.Module, spec, pack_kernels: bool = True, decode_attention: bool = True) -> int:
    """Fuse every group of linears that share an input and a configuration and, with ``pack_kernels``, make the
    RMSNorms, the gated SiLU product and the rotary embedding + cache write one kernel each (see the module
    docstring); ``decode_attention``: decode steps may run attn_kernel's kernel (False: transformers' attention
    function, its bits). Returns the number of linear groups fused."""
    quantized = [m for m in model.modules() if isinstance(m, QuantLinear)]
    backend = quantized[0].backend if quantized else "auto"
    # FP16 models have run without CuPy so far: they get these kernels only where the kernels can run
    kernels = pack_kernels and (bool(quantized) or available()[0])
    count = 0
    for layer in decoder_layers(model, spec):
        for group in spec.groups:
            members = [layer.get_submodule(name) for name in group.linears]
            fused_class = _fused_class(members)
            fused = None
            if fused_class is not None:
                fused = fused_class.concat(members)
                layer.add_module(f"fused_{group.linears[0].replace('.', '_')}", fused)
                start = 0
                for j, (name, member) in enumerate(zip(group.linears, members)):
                    last = j == len(members) - 1
                    replace_module(layer, name, SharedOutputSlice(fused, start, start + member.out_features, last))
                    start += member.out_features
                count += 1
            if kernels and group.norm is not None:
                _norm_kernel(layer, group.norm, fused if isinstance(fused, QuantLinear) else None, backend)
            if kernels and fused is not None and group.linears == GATED_MLP:
                _gated_mlp_kernel(layer, fused, backend)
            if kernels and fused is not None and group.linears == ROPE_QKV:
                _attention_kernel(layer, fused, backend, decode_attention)
    if kernels:
        _norm_kernel(model, spec.final_norm, None, backend)
        fuse_residual_adds(model, spec)
    return count


# Decoder layers whose forward is LLaMA's: x + attn(input_layernorm(x)), then h + mlp(post_attention_layernorm(h))
# (transformers' LlamaDecoderLayer, MistralDecoderLayer and Qwen2DecoderLayer.forward, op for op).
RESIDUAL_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer")
RESIDUAL_NORMS = ("input_layernorm", "post_attention_layernorm")


def fuse_residual_adds(model: nn.Module, spec) -> int:
    """Move each decoder layer's two residual adds into the RMSNorm launch that reads their sum: the add after
    attention into post_attention_layernorm's, the add after the MLP into the next layer's input norm (the last
    layer's into the final norm). Where both norms of a layer and the next norm are KernelRMSNorms, the layer's
    ``forward`` becomes ``_fused_residual_forward``; returns the number of layers changed. The layers still
    return the residual stream itself, and the same bits."""
    layers = decoder_layers(model, spec)
    final = model.get_submodule(spec.final_norm)
    count = 0
    for i, layer in enumerate(layers):
        after = layers[i + 1].input_layernorm if i + 1 < len(layers) else final
        norms = [getattr(layer, name, None) for name in RESIDUAL_NORMS] + [after]
        if type(layer).__name__ in RESIDUAL_LAYERS and all(isinstance(n, KernelRMSNorm) for n in norms):
            layer.forward = functools.partial(_fused_residual_forward, layer, after)
            count += 1
    return count


def _fused_residual_forward(layer: nn.Module, after: KernelRMSNorm, hidden_states: torch.Tensor, **kwargs):
    """transformers' LlamaDecoderLayer.forward with its adds in the norm launches (``fuse_residual_adds``): ``after``
    makes the returned sum's norm in the same launch and keeps it for its own call on that sum."""
    h = layer.input_layernorm(hidden_states)
    h, _ = layer.self_attn(hidden_states=h, **kwargs)
    residual, h = layer.post_attention_layernorm.add(h, hidden_states)
    return after.add_ahead(layer.mlp(h), residual)


GATED_MLP = ("mlp.gate_proj", "mlp.up_proj")  # LLaMA's MLP: down_proj(act_fn(gate_proj(x)) * up_proj(x))
ROPE_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # read by LLaMA's rotary attention


def _attention_kernel(layer: nn.Module, qkv: nn.Module, backend: str, decode_kernel: bool) -> None:
    """Replace ``layer.self_attn`` by a KernelAttention over the fused ``qkv`` when the fused width is the heads'."""
    attn = layer.self_attn
    config, head_dim = getattr(attn, "config", None), getattr(attn, "head_dim", None)
    if config is None or head_dim is None or not hasattr(attn, "layer_idx") or not hasattr(attn, "scaling"):
        return
    if qkv.out_features != (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim:
        return
    layer.self_attn = KernelAttention(attn, qkv, backend, decode_kernel)


def _gated_mlp_kernel(layer: nn.Module, gate_up: nn.Module, backend: str) -> None:
    """Replace ``layer.mlp`` by a KernelGatedMLP over the fused ``gate_up`` when its activation is SiLU."""
    mlp = layer.mlp
    if type(mlp.act_fn).__name__ not in ("SiLUActivation", "SiLU") or not hasattr(mlp, "down_proj"):
        return
    layer.mlp = KernelGatedMLP(mlp, gate_up, backend)


def _norm_kernel(parent: nn.Module, name: str, consumer: QuantLinear | None, backend: str) -> None:
    """Replace the RMSNorm ``name`` of ``parent`` by a KernelRMSNorm, if it is one the kernel computes."""
    norm = parent.get_submodule(name)
    weight = getattr(norm, "weight", None)
    if not hasattr(norm, "variance_epsilon") or weight is None or weight.dim() != 1:
        return
    try:
        launch_shape(weight.shape[0])
    except ValueError:  # wider than the kernel covers: HF's norm stays
        return
    replace_module(parent, name, KernelRMSNorm(norm, consumer, backend))
