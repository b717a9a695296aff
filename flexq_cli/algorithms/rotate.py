"""Rotation of the residual stream by a randomized Hadamard matrix (QuaRot-style), folded into the float model.

An orthogonal Q (hidden x hidden) turns every hidden state h into h Q. RMSNorm without its weight commutes with
Q (||h Q|| = ||h||), so after the norm weights are folded into the linears that read them, the model computes
the same function with
  * embeddings E Q, and the head W_lm diag(g_final) Q (untied from the embeddings: they now differ);
  * each linear reading a norm (q/k/v, gate/up): W diag(g) Q, the norm weight set to 1;
  * each linear writing into the residual (o_proj, down_proj): Q^T W (and its bias b Q).
Inside attention, v_proj's output and o_proj's input are rotated per head by a Hadamard matrix of the head size
(V H: attention mixes tokens, not channels, so o_proj reads its input times H and undoes it in its columns).

Why: a Hadamard rotation spreads the few huge channels of LLaMA-family hidden states over all channels, so the
inputs of q/k/v, gate/up and o_proj have no outliers left for 6/8-bit per-token scales to clip or waste range
on, and the weights' rows lose their outlier columns too (smaller group scales). down_proj's input (the MLP's
intermediate activations) has no linear producer to fold a rotation into: ``online_rotate`` (below) serves it.
All of it is done once on the float model: the kernels, the packed format and the integer numerics do not change.

Online rotation (``QuantConfig.online_rotate``, e.g. every down_proj): the linear's input is multiplied at run
time by the block-diagonal D = diag(q, q, ...) of one (128, 128) randomized Hadamard block q per 128-wide group,
and its weight becomes W D offline, so x W^T = (x D)(W D)^T. The quantization groups of both the weights and the
activations are 128 wide and aligned with the blocks, so within every group the outlier channels are spread as
a full rotation would spread them. The quantized linear stores q (64 KB) and applies it before quantizing its
input (modules.QuantLinear); the cost is one small (tokens, K/128, 128) x (128, 128) matmul per call.

The matrix: ``hadamard(n)`` builds a Hadamard matrix from Sylvester doublings and Paley (type I) blocks,
normalized and multiplied by random signs (a fixed seed), for every size that factors so (4096, 5120, 8192,
576 = 12 x 12 x 4, ...); other sizes raise ``ValueError``.
"""

from __future__ import annotations

import functools

import torch

from ..arch import decoder_layers, linear_names
from ..errors import FlexQError
from ..modules import INPUT_ROTATION
from ..primitives import BLOCK_K, block_rotate

ONLINE_SEED = 2  # the online block's random signs (0 and 1: the residual stream's and the heads' matrices)
PALEY_PRIMES = (3, 7, 11, 19, 23, 31, 43, 47, 59, 67, 71, 79, 83, 103, 107, 127)  # q = 3 mod 4: order q + 1


def _paley(q: int) -> torch.Tensor:
    """Hadamard matrix of order q + 1 (Paley I; q prime, q = 3 mod 4)."""
    residues = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0] + [1 if d in residues else -1 for d in range(1, q)], dtype=torch.float64)
    i = torch.arange(q)
    jacobsthal = chi[(i[None, :] - i[:, None]) % q]
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, jacobsthal
    return s + torch.eye(q + 1, dtype=torch.float64)


@functools.cache
def _hadamard_pm1(n: int) -> torch.Tensor | None:
    """A +-1 matrix H of order n with H H^T = n I, or None when this construction cannot make one."""
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if n % 2 == 0 and (h := _hadamard_pm1(n // 2)) is not None:
        return torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    for q in PALEY_PRIMES:
        if n % (q + 1) == 0 and (h := _hadamard_pm1(n // (q + 1))) is not None:
            return torch.kron(_paley(q), h)
    return None


def hadamard(n: int, seed: int = 0) -> torch.Tensor:
    """(n, n) float64 orthogonal matrix: a normalized Hadamard matrix times random signs of the rows."""
    h = _hadamard_pm1(n)
    if h is None:
        raise ValueError(f"no Hadamard matrix of order {n} from Sylvester and Paley blocks; "
                         "rotation needs a hidden size like 2^a x (q + 1) for a prime q = 3 mod 4")
    signs = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed)).double() * 2 - 1
    return signs[:, None] * h / n ** 0.5


def _set(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, torch.nn.Parameter(value.to(old.dtype), requires_grad=False))


@torch.no_grad()
def rotate_model(model, spec, seed: int = 0) -> None:
    """Rotate ``model``'s residual stream (and each head's values) in place, keeping its function; the head is
    untied from the embeddings. See the module docstring."""
    config = model.config
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    device = model.get_input_embeddings().weight.device
    q = hadamard(hidden, seed).to(device)
    hd = hadamard(head_dim, seed + 1).to(device)

    readers = [g for g in spec.groups if g.norm is not None]  # q/k/v, gate/up: read a norm
    writers = [g for g in spec.groups if g.norm is None]  # o_proj (attention's), down_proj: write the residual
    attn = writers[0]  # spec order: attention's group before the MLP's; its prev is v_proj

    embed, head = model.get_input_embeddings(), model.get_submodule(spec.lm_head)
    final = model.get_submodule(spec.final_norm)
    _set(head, "weight", (head.weight.double() * final.weight.double()) @ q)
    final.weight.data.fill_(1.0)
    _set(embed, "weight", embed.weight.double() @ q)
    config.tie_word_embeddings = False

    for layer in decoder_layers(model, spec):
        for group in readers:
            norm = layer.get_submodule(group.norm)
            for lin in (layer.get_submodule(rel) for rel in group.linears):
                _set(lin, "weight", (lin.weight.double() * norm.weight.double()) @ q)
            norm.weight.data.fill_(1.0)
        for lin in (layer.get_submodule(rel) for group in writers for rel in group.linears):
            _set(lin, "weight", q.T @ lin.weight.double())
            if lin.bias is not None:
                _set(lin, "bias", lin.bias.double() @ q)
        v, o = layer.get_submodule(attn.prev), layer.get_submodule(attn.linears[0])
        wv = v.weight.double().reshape(-1, head_dim, v.in_features)  # (kv heads, head_dim, hidden)
        _set(v, "weight", torch.einsum("ed,hek->hdk", hd, wv).reshape(v.weight.shape))
        if v.bias is not None:
            _set(v, "bias", (v.bias.double().reshape(-1, head_dim) @ hd).reshape(-1))
        wo = o.weight.double().reshape(o.out_features, -1, head_dim)  # (hidden, heads, head_dim)
        _set(o, "weight", (wo @ hd).reshape(o.weight.shape))


def online_block() -> torch.Tensor:
    """The (128, 128) float64 block of the online input rotation."""
    return hadamard(BLOCK_K, ONLINE_SEED)


@torch.no_grad()
def fold_input_rotation(linear: torch.nn.Linear, q: torch.Tensor, name: str = "linear") -> None:
    """Make ``linear`` rotate its input by diag(q, q, ...) and hold W diag(q, q, ...): the same function, in place.
    A forward pre-hook rotates the input of the float linear; the quantized modules built from it
    (``modules.INPUT_ROTATION``) rotate theirs."""
    if linear.in_features % q.shape[0]:
        raise FlexQError(f"online_rotate: {name} has {linear.in_features} input features, not a multiple of "
                         f"{q.shape[0]}", "leave this linear out of online_rotate")
    _set(linear, "weight", block_rotate(linear.weight.double(), q.to(linear.weight.device)))
    qf = q.float().to(linear.weight.device)
    setattr(linear, INPUT_ROTATION, qf)
    linear.register_forward_pre_hook(lambda module, args: (block_rotate(args[0], qf), *args[1:]), prepend=True)


def rotate_inputs_online(model, spec, config) -> int:
    """Fold the online rotation into every decoder linear that ``config.online_rotate`` names; returns how many."""
    names = [name for name in linear_names(model, spec) if config.online_rotated(name)]
    if not names:
        raise FlexQError(f"online_rotate {list(config.online_rotate)} matches no decoder linear of this model",
                         "use full names like model.layers.0.mlp.down_proj or a pattern like re:.*\\.down_proj")
    q = online_block()
    for name in names:
        fold_input_rotation(model.get_submodule(name), q, name)
    return len(names)
