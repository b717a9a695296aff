"""Modules that stand in for ``nn.Linear`` (the packed W6Ax linear, the float simulation used by analysis) and for
the RMSNorm before them at inference (one kernel that can also quantize and pack for the linear)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from . import attn_kernel
from .attn_kernel import decode_attention_cuda
from .btc import btc_linear
from .config import QuantConfig
from .cuda_launch import ACTIVATION_DTYPES, available
from .dispatch import choose_kernel
from .errors import BackendUnavailable, NonFiniteError
from .int8_kernel import int8_linear, reads_tiled_acts
from .norm_kernel import rms_norm_cuda, silu_mul_cuda
from .packing import pack_weight, packed_words, unpack_weight
from .primitives import (BLOCK_K, block_rotate, dequantize, fake_quantize_activation, pad_k, padded_k, quantize_weight,
                         rms_norm)
from .reference import reference_linear
from .rope_kernel import rope_cache_cuda

BACKENDS = ("auto", "reference", "btc", "int8")
# Set on a float nn.Linear by algorithms/rotate.py's online fold: the (128, 128) block its input is rotated by
# (its weight already holds W diag(q, q, ...)). The modules built from that linear apply the same rotation.
INPUT_ROTATION = "flexq_input_rotation"


class QuantLinear(nn.Module):
    """Linear layer with packed INT6 weights and dynamically quantized 6- or 8-bit activations.

    Buffers (the state dict, as saved in a quantized model directory):
      qweight: (N, Kp / 128 * 24) int32 bit-plane words in 16-row groups (layout: packing.py)
      scales:  (N, Kp / weight_group_size) float16, or (N, 1) per output channel
      bias:    (N,) in the model's 16-bit dtype, when the source linear had one
      rotation: (128, 128) float32, with ``rotate_input``: the input is multiplied by diag(rotation, ...) before
               its quantization (the online rotation of algorithms/rotate.py; the weight was folded to match)
    ``backend``: "reference" (pure PyTorch, any device), "btc" or "int8" (one CUDA kernel), or "auto" (on CUDA the
    kernel dispatch.py picks for the token count, on the CPU the reference; a CUDA input without a usable kernel
    is an error, never a silent fallback). Every backend gives the same bits.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, act_bits: int,
                 weight_group_size: int = 128, act_group_size: int = 128, dtype=torch.float16, device=None,
                 rotate_input: bool = False):
        super().__init__()
        if rotate_input and in_features % BLOCK_K:
            raise ValueError(f"the online input rotation needs in_features divisible by {BLOCK_K}, got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.act_bits, self.weight_group_size, self.act_group_size = act_bits, weight_group_size, act_group_size
        self.padded_in = padded_k(in_features, weight_group_size, act_group_size)
        n_scales = 1 if weight_group_size <= 0 else self.padded_in // weight_group_size
        self.register_buffer("qweight", torch.empty(out_features, packed_words(self.padded_in), dtype=torch.int32,
                                                     device=device))
        self.register_buffer("scales", torch.empty(out_features, n_scales, dtype=torch.float16, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None)
        rotation = torch.empty(BLOCK_K, BLOCK_K, dtype=torch.float32, device=device) if rotate_input else None
        self.register_buffer("rotation", rotation)
        self.backend = "auto"
        self._codes = None  # unpacked int8 codes, cached for the reference path
        self._rotation = None  # ``rotation`` in the activations' dtype, cached
        # (x, kernel, (activations, scales)): x already quantized and packed for ``kernel`` by the kernel before this
        # layer (KernelRMSNorm, KernelGatedMLP: _run_packing); used once, by the call on that very tensor
        self.handed_over = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, act_bits: int, config: QuantConfig, name: str = "",
                    codes: torch.Tensor | None = None, scales: torch.Tensor | None = None) -> "QuantLinear":
        """Pack ``linear``: round to nearest with absmax scales, or the precomputed ``codes`` ((N, Kp) int8) and
        ``scales`` ((N, Kp / g) float16) that an algorithm (GPTQ, clip search) chose for it."""
        w = linear.weight.detach()
        if not torch.isfinite(w).all():
            raise NonFiniteError(f"weight of {name or 'a linear layer'} has {int((~torch.isfinite(w)).sum())} "
                                 "NaN/Inf values", "the source checkpoint is damaged; re-download or fix it")
        has_bias = linear.bias is not None
        dtype = linear.bias.dtype if has_bias else torch.float16
        rotation = getattr(linear, INPUT_ROTATION, None)
        layer = cls(linear.in_features, linear.out_features, bias=has_bias, act_bits=act_bits,
                    weight_group_size=config.weight_group_size, act_group_size=config.act_group_size,
                    dtype=dtype, device=w.device, rotate_input=rotation is not None)
        q, scales = _codes_and_scales(linear, layer.padded_in, config, codes, scales)
        layer.qweight.copy_(pack_weight(q))
        layer.scales.copy_(scales)
        if rotation is not None:
            layer.rotation.copy_(rotation)
        if has_bias:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def codes(self) -> torch.Tensor:
        """(N, Kp) int8 weight codes, unpacked once and cached (the packed buffer stays the source of truth)."""
        if self._codes is None or self._codes.device != self.qweight.device:
            self._codes = unpack_weight(self.qweight, self.padded_in)
        return self._codes

    def dequantized_weight(self) -> torch.Tensor:
        """(N, K) float32 weight as the integer codes and scales represent it (for the rotated input, if any)."""
        w = dequantize(self.codes(), self.scales, self.weight_group_size)
        return w[:, : self.in_features]

    def _apply(self, fn, *args, **kwargs):
        self._codes = self._rotation = None  # device or dtype moves invalidate the caches
        return super()._apply(fn, *args, **kwargs)

    def kernel_for(self, x: torch.Tensor) -> str:
        """What runs ``x`` (already rotated, if this layer rotates): 'reference', 'btc' or 'int8'."""
        backend = resolve_backend(self.backend, x)
        if backend == "auto":
            backend = choose_kernel(x.numel() // x.shape[-1], self.out_features, self.padded_in, self.act_bits)
        return backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        handed, self.handed_over = self.handed_over, None
        if self.rotation is not None:
            if self._rotation is None or self._rotation.dtype != x.dtype or self._rotation.device != x.device:
                self._rotation = self.rotation.to(device=x.device, dtype=x.dtype)
            x = block_rotate(x, self._rotation)
        if handed is not None and handed[0] is x:  # pack handed[1], chosen by _pack_for for kernel_for(x) on this x
            backend, packed = PACK_KERNEL[handed[1]], handed[2]
        else:
            backend, packed = self.kernel_for(x), None
        if backend != "reference":
            kernel = btc_linear if backend == "btc" else int8_linear
            return kernel(x, self.qweight, self.scales, act_bits=self.act_bits, bias=self.bias,
                          act_group_size=self.act_group_size, weight_group_size=self.weight_group_size,
                          packed=packed)
        return reference_linear(x, self.codes(), self.scales, act_bits=self.act_bits, bias=self.bias,
                                act_group_size=self.act_group_size, weight_group_size=self.weight_group_size)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, W6A{self.act_bits}, "
                f"wgroup={self.weight_group_size}, agroup={self.act_group_size}, backend={self.backend}"
                + (", input rotated" if self.rotation is not None else ""))


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The backend that runs ``x``: 'reference', 'btc', 'int8', or 'auto' for a CUDA input whose kernel depends
    on the token count (dispatch.choose_kernel). 'auto' on the CPU is the reference path."""
    if backend == "reference" or (backend == "auto" and not x.is_cuda):
        return "reference"
    if not x.is_cuda:
        raise BackendUnavailable(f"--backend {backend} needs the model on a CUDA GPU",
                                 "use --device cuda or --backend reference")
    ok, why = available()
    if not ok:
        raise BackendUnavailable(f"the CUDA kernels cannot run here: {why}",
                                 "install it (pip install 'flexq[cuda]') or pass --backend reference (slow)")
    return backend


class KernelRMSNorm(nn.Module):
    """An RMSNorm (LLaMA, Mistral, Qwen2: ``weight``, ``variance_epsilon``) as one CUDA launch for inference; with a
    quantized ``consumer`` (the linear that reads its output: fusion.py passes the fused q/k/v or gate/up layer) the
    same launch also quantizes and packs the output for the kernel that layer will run, and hands it over.

    On a CUDA fp16/bf16 input: ``primitives.rms_norm``'s numerics, by the kernel (norm_kernel.py) or, with
    backend 'reference', in PyTorch (the same bits, so the two backends still agree bit for bit). Elsewhere (the
    CPU, float32): HF's own formula, so those results do not change. The hand-over happens only where the
    consumer quantizes in groups of 128 without an input rotation and runs the BTC or INT8 kernel on ``x``.
    """

    def __init__(self, norm: nn.Module, consumer: QuantLinear | None = None, backend: str = "auto"):
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = norm.variance_epsilon
        self.consumer = [] if consumer is None else [consumer]  # a list: not registered as a submodule twice
        self.backend = backend
        self.ahead = None  # (s, y): add_ahead's sum and this norm of it, for the next call, on that very tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead[0] is x:
            return ahead[1]
        eps = self.variance_epsilon
        if not self._cuda_16bit(x):
            xf = x.to(torch.float32)  # transformers' LlamaRMSNorm.forward, op for op
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            return self.weight * xf.to(x.dtype)
        if resolve_backend(self.backend, x) == "reference":
            return rms_norm(x, self.weight, eps)
        return self._launch(rms_norm_cuda, _kernel_ready(x))

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, y): s = ``residual + x``, the decoder's residual stream as transformers adds it, and y = this norm of
        s. Where ``forward`` runs the kernel, one launch makes both (and the consumer's pack), else s is added and
        normalized as ``forward`` does: the same bits either way."""
        if not self._adds_in_kernel(x, residual):
            s = residual + x
            return s, self(s)
        return self._add_launch(x, residual)

    def add_ahead(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + x``; where the kernel runs, this norm of the sum is made in the same launch and kept for this
        norm's next call, if that call is on the returned tensor itself (the next decoder layer's input norm, or
        the final norm: fusion.fuse_residual_adds)."""
        if not self._adds_in_kernel(x, residual):
            return residual + x
        self.ahead = self._add_launch(x, residual)
        return self.ahead[0]

    def _launch(self, launch, x: torch.Tensor) -> torch.Tensor:
        """This norm of ``x`` by ``launch`` (rms_norm_cuda, or it with a residual bound), with the consumer's pack."""
        return _run_packing(launch, self.consumer[0] if self.consumer else None, x, x, self.weight,
                            self.variance_epsilon)

    def _add_launch(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, y) of ``add`` from one kernel launch (``_adds_in_kernel`` holds)."""
        x, residual = _kernel_ready(x), _kernel_ready(residual)
        s = torch.empty_like(x)
        return s, self._launch(functools.partial(rms_norm_cuda, residual=residual, sum_out=s), x)

    def _cuda_16bit(self, x: torch.Tensor) -> bool:
        """Where ``forward`` computes ``primitives.rms_norm``'s numerics (kernel or PyTorch), not HF's formula."""
        return x.is_cuda and x.dtype in ACTIVATION_DTYPES and self.weight.dtype == x.dtype

    def _adds_in_kernel(self, x: torch.Tensor, residual: torch.Tensor) -> bool:
        return (self._cuda_16bit(x) and self.weight.device == x.device and residual.shape == x.shape
                and residual.dtype == x.dtype and residual.device == x.device
                and resolve_backend(self.backend, x) != "reference")

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, backend={self.backend}" + (
            ", packs for the next linear" if self.consumer else "")


class KernelGatedMLP(nn.Module):
    """LLaMA's MLP, ``down_proj(silu(gate_proj(x)) * up_proj(x))``, over the fused gate/up layer (fusion.py), with
    the gated product one launch on CUDA (norm_kernel.silu_mul_cuda) that also packs down_proj's activations
    when down_proj is a QuantLinear that can take them (as KernelRMSNorm). The product is HF's bit for bit on
    every backend (PyTorch's SiLU formula in the kernel); on the CPU, float32 or backend 'reference' it is HF's
    own expression."""

    def __init__(self, mlp: nn.Module, gate_up: nn.Module, backend: str = "auto"):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.act_fn = mlp.act_fn
        self.gate_up = [gate_up]  # registered in the decoder layer already
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gu = self.gate_up[0](x)
        i = gu.shape[-1] // 2
        if not gu.is_cuda or gu.dtype not in ACTIVATION_DTYPES or resolve_backend(self.backend, gu) == "reference":
            return self.down_proj(self.act_fn(gu[..., :i]) * gu[..., i:])
        gu = _kernel_ready(gu)
        down = self.down_proj if isinstance(self.down_proj, QuantLinear) else None
        return self.down_proj(_run_packing(silu_mul_cuda, down, gu[..., :i], gu))


class KernelAttention(nn.Module):
    """A LLaMA-family attention block (q/k/v fused into one layer by fusion.py, rotary position embedding, KV cache,
    attention, o_proj) whose rotary embedding and cache write are one CUDA launch (rope_kernel.rope_cache_cuda)
    where the cache is generation's static one (``generate.StaticKV``: it has ``layer_buffers``). q and the cache
    then hold transformers' bits exactly. The attention is transformers' own function, called as its forward calls
    it, except in decode steps where attn_kernel's decode kernel pays (``_decode_plan``): float32 numerics, not
    SDPA's bits; it also hands o_proj its INT8 pack. ``decode_kernel=False`` (``--no-attn-kernel``) keeps
    transformers' attention function in decode steps too. Everywhere else (the CPU, other caches, backend
    'reference') transformers' forward runs unchanged."""

    def __init__(self, attn: nn.Module, qkv: nn.Module, backend: str = "auto", decode_kernel: bool = True):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.attn = [attn]  # transformers' module: the fallback, and the attributes attention functions read
        self.qkv = [qkv]  # the fused q/k/v layer (registered in the decoder layer already)
        self.heads, self.kv_heads = attn.config.num_attention_heads, attn.config.num_key_value_heads
        self.backend = backend
        self.decode_kernel = decode_kernel

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None,
                past_key_values=None, **kwargs):
        attn = self.attn[0]
        if not self._runs_kernel(hidden_states, position_embeddings, past_key_values):
            return attn(hidden_states, position_embeddings=position_embeddings, attention_mask=attention_mask,
                        past_key_values=past_key_values, **kwargs)
        keys, values, slots = past_key_values.layer_buffers(attn.layer_idx)
        qkv = _kernel_ready(self.qkv[0](hidden_states))  # (B, T, (heads + 2 kv_heads) * head_dim)
        cos, sin = (t.contiguous() for t in position_embeddings)
        q = rope_cache_cuda(qkv, cos, sin, slots, keys, values, heads=self.heads, kv_heads=self.kv_heads)
        keys, values = past_key_values.visible(keys, values)  # the prefix this step's mask covers
        run, packs_for = self._decode_plan(q, attention_mask)
        if run:
            out, packed = decode_attention_cuda(q.transpose(1, 2), keys, values, attention_mask, attn.scaling,
                                                quant_bits=packs_for.act_bits if packs_for else None)
            if packed is not None:
                packs_for.handed_over = (out, "int8", packed)
            return self.o_proj(out), None
        out, weights = _attention_function(attn)(
            attn, q.transpose(1, 2), keys, values, attention_mask,
            dropout=attn.attention_dropout if attn.training else 0.0, scaling=attn.scaling,
            sliding_window=_sliding_window(attn), **kwargs)
        return self.o_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights

    def _decode_plan(self, q: torch.Tensor, mask) -> tuple[bool, QuantLinear | None]:
        """(whether this step's attention runs attn_kernel's decode kernel, the o_proj that launch also packs for or
        None), for q (B, T, H, D). The kernel needs one query token, a supported head size, no sliding window or
        dropout, and an additive (B, 1, 1, L) mask or none; it runs where it also makes o_proj's INT8 pack (head size
        128: a head is one act group) or has a CTA per (sequence, head) (attn_kernel.faster_alone). Otherwise
        transformers' attention function (cuDNN's SDPA) is the faster one (docs/generation.md)."""
        attn = self.attn[0]
        if not self.decode_kernel or q.shape[1] != 1 or q.shape[-1] not in attn_kernel.HEAD_DIMS:
            return False, None
        if _sliding_window(attn) is not None or (attn.training and attn.attention_dropout):
            return False, None
        if mask is not None and (mask.dim() != 4 or mask.dtype != q.dtype or mask.shape[1:3] != (1, 1)):
            return False, None
        consumer = self.o_proj if isinstance(self.o_proj, QuantLinear) else None
        fuse = q.shape[-1] == BLOCK_K and _pack_for(consumer, q.reshape(q.shape[0], 1, -1)) == "int8"
        return fuse or attn_kernel.faster_alone(q.shape[0] * q.shape[2]), consumer if fuse else None

    def _runs_kernel(self, x: torch.Tensor, position_embeddings, cache) -> bool:
        if not x.is_cuda or x.dtype not in ACTIVATION_DTYPES or not hasattr(cache, "layer_buffers"):
            return False
        cos = None if position_embeddings is None else position_embeddings[0]
        if cos is None or cos.dtype != x.dtype or cos.shape[-1] != self.attn[0].head_dim:  # (partial rotary: HF's)
            return False
        return resolve_backend(self.backend, x) != "reference"


def _kernel_ready(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a contiguous copy where it is strided or its base is not 16-byte aligned (the kernels read whole
    rows from an aligned base)."""
    return t if t.is_contiguous() and t.data_ptr() % 16 == 0 else t.clone(memory_format=torch.contiguous_format)


def _attention_function(attn: nn.Module):
    """The attention function transformers' forward of ``attn`` would call (its config's implementation)."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = attn.config._attn_implementation
    eager = sys.modules[type(attn).__module__].eager_attention_forward
    get = getattr(ALL_ATTENTION_FUNCTIONS, "get_interface", None)
    return get(impl, eager) if get else (eager if impl == "eager" else ALL_ATTENTION_FUNCTIONS[impl])


def _sliding_window(attn: nn.Module):
    """The sliding window transformers' forward passes: Qwen2 its layer's, Mistral its config's, LLaMA none."""
    return attn.sliding_window if hasattr(attn, "sliding_window") else getattr(attn.config, "sliding_window", None)


def _run_packing(launch, consumer: QuantLinear | None, like: torch.Tensor, *args) -> torch.Tensor:
    """``launch(*args)``'s output (norm_kernel.rms_norm_cuda or silu_mul_cuda); where ``consumer`` can take a pack
    made here (``_pack_for``, for an input shaped as ``like``) the same launch also makes it, and the consumer gets
    it handed over for its call on that output."""
    pack = _pack_for(consumer, like)
    if pack is None:
        return launch(*args)[0]
    y, packed = launch(*args, pack=pack, act_bits=consumer.act_bits, padded_in=consumer.padded_in)
    consumer.handed_over = (y, pack, packed)
    return y


# The kernel that reads each pack _pack_for can choose (norm_kernel.PACKS): the tiled layout is the INT8 kernel's too.
PACK_KERNEL = {"btc": "btc", "int8": "int8", "int8_tiled": "int8"}


def _pack_for(consumer: QuantLinear | None, x: torch.Tensor) -> str | None:
    """The pack (norm_kernel.PACKS) that ``consumer`` can take, made before it, for an input shaped as ``x``: 'btc'
    or 'int8' for the kernel it will run, 'int8_tiled' where that is the warp-specialized INT8 kernel (it reads the
    tiled layout); None where it takes none (not act groups of 128, or an input rotation)."""
    if consumer is None or consumer.rotation is not None or consumer.act_group_size != BLOCK_K:
        return None
    kernel = consumer.kernel_for(x)
    if kernel == "int8" and reads_tiled_acts(x.numel() // x.shape[-1], consumer.out_features, consumer.padded_in,
                                             x.device):
        return "int8_tiled"
    return kernel if kernel in ("btc", "int8") else None


class SimQuantLinear(nn.Module):
    """Float simulation of a W6Ax linear: INT6-dequantized weights, fake-quantized activations.

    Equal to QuantLinear up to float32 rounding order, and as fast as a dense matmul: the sensitivity analysis
    runs hundreds of forward passes through it. ``act_bits`` is mutable (None: activations unquantized).
    ``lazy``: keep the int8 codes and scales (0.27 B per weight) and dequantize in each forward instead of holding
    the float32 weight (4 B): the same values, for the streamed analysis of 70B-sized layers.
    """

    def __init__(self, linear: nn.Linear, config: QuantConfig, act_bits: int | None,
                 codes: torch.Tensor | None = None, scales: torch.Tensor | None = None, lazy: bool = False):
        super().__init__()
        self.in_features, self.config, self.act_bits = linear.in_features, config, act_bits
        self.padded_in = padded_k(linear.in_features, config.weight_group_size, config.act_group_size)
        q, s = _codes_and_scales(linear, self.padded_in, config, codes, scales)
        self.weight = None if lazy else nn.Parameter(dequantize_rows(q, s, config.weight_group_size),
                                                     requires_grad=False)  # (N, Kp) float32
        self.register_buffer("codes", q if lazy else None)
        self.register_buffer("code_scales", s if lazy else None)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        rotation = getattr(linear, INPUT_ROTATION, None)
        self.register_buffer("rotation", None if rotation is None else rotation.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if self.rotation is None else block_rotate(x.float(), self.rotation)
        xf = pad_k(xf, self.padded_in)
        if self.act_bits is not None:
            xf = fake_quantize_activation(xf, self.act_bits, self.config.act_group_size)
        w = self.weight if self.weight is not None else dequantize_rows(self.codes, self.code_scales,
                                                                          self.config.weight_group_size)
        return nn.functional.linear(xf, w, self.bias).to(x.dtype)


DEQUANT_CHUNK_ELEMENTS = 1 << 24  # weights per dequantization chunk (64 MB of float32 temporaries)


def dequantize_rows(q: torch.Tensor, s: torch.Tensor, group_size: int) -> torch.Tensor:
    """``dequantize`` in row chunks: the same values (elementwise), temporaries bounded for 70B-sized weights."""
    w = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    step = max(1, DEQUANT_CHUNK_ELEMENTS // max(q.shape[1], 1))
    for r in range(0, q.shape[0], step):
        w[r:r + step] = dequantize(q[r:r + step], s[r:r + step], group_size)
    return w


def _codes_and_scales(linear: nn.Linear, padded_in: int, config: QuantConfig, codes, scales):
    """The given (codes, scales), checked against the layer's shape, or round-to-nearest ones."""
    if codes is None and scales is None:
        return quantize_weight(pad_k(linear.weight.detach().float(), padded_in), config.weight_bits,
                               config.weight_group_size)
    n_scales = 1 if config.weight_group_size <= 0 else padded_in // config.weight_group_size
    if codes is None or scales is None or codes.shape != (linear.out_features, padded_in) \
            or scales.shape != (linear.out_features, n_scales) or codes.dtype != torch.int8:
        raise ValueError(f"precomputed codes/scales must be int8 ({linear.out_features}, {padded_in}) and "
                         f"({linear.out_features}, {n_scales}); got {None if codes is None else tuple(codes.shape)} "
                         f"and {None if scales is None else tuple(scales.shape)}")
    return codes.to(linear.weight.device), scales.to(device=linear.weight.device, dtype=torch.float16)


def set_backend(model: nn.Module, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend}")
    for module in model.modules():
        if isinstance(module, (QuantLinear, KernelRMSNorm, KernelGatedMLP, KernelAttention)):
            module.backend = backend


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)
