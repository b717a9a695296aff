"""Second-order (Fisher) estimate of every decoder linear's A6 damage, from one forward and a few backwards.

The exact analysis (analyze.measure_sensitivity) re-runs the model tail once per linear: ~L^2/2 layer
forwards per sample. Here one base forward (every linear W6A8) records, at every simulated linear l, the change
its output would see at 6-bit activations on the same input, delta_l = y_l(A6) - y_l(A8) ((T, N) float32);
backward passes then give every linear's gradient g_l = d/dy_l at once, and

    KL_l ~= 1/2 E_y[ sum_t' (g_l,t' . delta_l,t')^2 ] / T,     dNLL_l ~= -sum_t' (g*_l,t' . delta_l,t') / (T - 1)

where g is the gradient of sum_t log p_t(y_t) with next tokens y_t drawn from the base model's own p_t (a few
independent draws; E_y over them), and g* the same with the true next tokens. Why: to second order,
KL(p || p + dp) = 1/2 dz^T F dz with F = E_{y~p}[grad log p(y) grad log p(y)^T] the Fisher of the output
distribution (the first-order term vanishes because E_p[grad log p] = 0), so each draw's (g . delta)^2 is an
unbiased sample of the quadratic form.

Per-position products. One backward of sum_t log p_t(y_t) sums into g_t' the terms of every output position
t. Squaring the total sum_t' g_t' . delta_t' pairs every (t, t') term with every other: the pairs of two
different output positions are zero in expectation (independent draws, mean-zero scores) but add noise per
draw. Squaring per input position t' keeps the pairs with equal input positions (whose expectation, summed, is
the quadratic form's diagonal in t') and drops those with t'1 != t'2: in expectation they are the quadratic
form's off-diagonal part, how the A6 errors of two different tokens combine at one output, which largely
cancels over many pairs because per-token quantization errors are close to independent. Also dropped: terms
beyond second order, and the rounding of the downstream quantizers (their gradient passes straight through;
the exact runs keep a floor from it, docs/accuracy.md). Cost per sample: one forward and draws + 1 backwards,
instead of one model tail per linear.
"""

from __future__ import annotations

import torch
from torch import nn

from . import ui
from .modules import SimQuantLinear, replace_module
from .primitives import block_rotate


class _StraightThrough(torch.autograd.Function):
    """y = sim(x) exactly (the W6A8 simulation); dy/dx = the dequantized weight, i.e. the activation quantizer
    passes the gradient straight through (its rounding has zero gradient almost everywhere)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sim: SimQuantLinear) -> torch.Tensor:
        ctx.sim, ctx.k = sim, x.shape[-1]
        return sim(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        w = ctx.sim.weight[:, : ctx.k]  # (N, Kp) -> (N, K): the zero-padded columns have no input
        gx = g.float() @ w
        if ctx.sim.rotation is not None:  # y = (x Q) W^T: the gradient of x is (g W) Q^T
            gx = block_rotate(gx, ctx.sim.rotation.T)
        return gx.to(g.dtype), None


class _Scores:
    """Per-linear sums filled by the output hooks during each backward pass."""

    def __init__(self, n: int, device):
        self.square = torch.zeros(n, dtype=torch.float64, device=device)  # sum over draws, positions
        self.first = torch.zeros(n, dtype=torch.float64, device=device)  # sum over positions (true labels)
        self.mode = "draw"

    def add(self, j: int, g: torch.Tensor, delta: torch.Tensor) -> None:
        """``g``, ``delta``: (..., T, N) gradient and A6 - A8 change of linear ``j``'s output."""
        s = (g.float() * delta).sum(dim=-1)  # (..., T) per-position products g_t' . delta_t'
        if self.mode == "draw":
            self.square[j] += s.double().square().sum()
        else:
            self.first[j] += s.double().sum()


class _Probe(nn.Module):
    """Stands in for one SimQuantLinear during the Fisher pass: its output at its own bits (A8 in the analysis;
    straight-through gradient) flows on; its A6 output on the same input is kept only as the difference, which
    the output's gradient hook scores and which lives until the sample's last backward."""

    def __init__(self, sim: SimQuantLinear, j: int, scores: _Scores):
        super().__init__()
        self.sim, self.j, self.scores = sim, j, scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _StraightThrough.apply(x, self.sim)
        bits, self.sim.act_bits = self.sim.act_bits, 6
        try:
            with torch.no_grad():
                delta = (self.sim(x) - y).float()
        finally:
            self.sim.act_bits = bits
        if y.requires_grad:
            y.register_hook(lambda g: self.scores.add(self.j, g, delta))
        return y


class _LeafEmbeddings:
    """Forward hook that makes the embedding output a leaf needing a gradient: the graph then reaches every
    linear, and backwards taken to this leaf alone never compute weight gradients (lm_head, norms)."""

    def __init__(self):
        self.leaf: torch.Tensor | None = None

    def __call__(self, module, args, output: torch.Tensor) -> torch.Tensor:
        self.leaf = output.detach().requires_grad_()
        return self.leaf


def _label_grad(p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(T, V) d/dlogits of sum_t log p_t(labels_t) = onehot(labels_t) - p_t, for the first len(labels) rows."""
    grad = -p
    rows = torch.arange(len(labels), device=p.device)
    grad[rows, labels] += 1.0
    grad[len(labels):] = 0
    return grad


def _sample_scores(model, ids: torch.Tensor, scores: _Scores, draws: int, seed: int) -> None:
    """One (T,) sample: the base forward, ``draws`` backwards with sampled labels, one with the true labels."""
    embeddings = _LeafEmbeddings()
    handle = model.get_input_embeddings().register_forward_hook(embeddings)
    try:
        with torch.enable_grad():
            logits = model(ids[None], use_cache=False).logits[0].float()  # (T, V)
    finally:
        handle.remove()
    p = torch.softmax(logits.detach(), dim=-1)
    gen = torch.Generator(device=p.device).manual_seed(seed)
    scores.mode = "draw"
    for _ in range(draws):
        y = torch.multinomial(p, 1, generator=gen)[:, 0]  # (T,) next tokens drawn from the base model itself
        torch.autograd.grad(logits, embeddings.leaf, _label_grad(p, y), retain_graph=True)
    scores.mode = "true"
    torch.autograd.grad(logits, embeddings.leaf, _label_grad(p, ids[1:]))  # the last position has no label


def fisher_sensitivity(model, sims: dict[str, SimQuantLinear], input_ids: torch.Tensor, draws: int = 4,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(kl, dnll) float32 tensors of shape (L,), as analyze.measure_sensitivity returns, estimated (module
    docstring). ``sims`` at A8 in ``model`` (float32, not lazy); ``input_ids`` (samples, T)."""
    names = list(sims)
    if any(sim.weight is None for sim in sims.values()):
        raise ValueError("the Fisher estimate needs SimQuantLinear's float weight (lazy=False)")
    device = next(model.parameters()).device
    scores = _Scores(len(names), device)
    for j, name in enumerate(names):
        replace_module(model, name, _Probe(sims[name], j, scores))
    n, t = input_ids.shape
    try:
        for s in ui.track(range(n), "estimating sensitivity (Fisher)", total=n):
            _sample_scores(model, input_ids[s].to(device), scores, draws, seed + s)
    finally:
        for name, sim in sims.items():
            replace_module(model, name, sim)
    kl = 0.5 * scores.square / (draws * t * n)
    dnll = -scores.first / ((t - 1) * n)
    return kl.float().cpu(), dnll.float().cpu()
