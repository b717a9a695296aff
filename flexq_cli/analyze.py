"""``flexq analyze``: measured, layer-wise sensitivity of every decoder linear to 6- vs 8-bit activations.

Method. All weights INT6 and all activations 8-bit is the base model. For each decoder linear l alone, its
activations drop to 6 bits and we measure, on calibration tokens, the KL divergence of the final next-token
distribution from the base model's (and the increase of the calibration NLL). Cost is kept low by caching
every decoder layer's input from the base pass: the run for l starts at l's own decoder layer, so a linear in
layer i costs (L - i) layers plus the head, not a whole forward pass. Streamed (``--stream``,
``streaming.analyze_streamed``), the same runs go through the layers side by side: each layer is read once,
carries the base and every run begun in an earlier layer, and begins one run per linear of its own. The A8 set
is the top of the ranking under a budget: a fraction or a count of the linears, or the smallest set whose
remaining (A6) scores sum below a KL target.

``method="fisher"`` (fisher.py) estimates the same KL and dNLL to second order from one forward and a few
backward passes per sample instead of one model tail per linear (in memory only; not with ``--stream``). The
default, ``auto``, is fisher in memory and exact with ``--stream``: on SmolLM2 the Fisher plans gave the lower
40-window perplexity in an eighth of the time (docs/accuracy.md, "Fast sensitivity analysis").

Artifact ``plan.safetensors``: tensors ``kl`` and ``dnll`` (one entry per linear, in layer order), and the plan
in the manifest (``extra.act_bits``: module name -> 8 for the A8 set; every other linear uses ``extra.default``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from . import ui
from .arch import decoder_layers, layer_index, linear_names
from .artifacts import ARTIFACT_FILES, Manifest, atomic_output_dir, load_artifact, save_artifact
from .calibrate import load_calibration
from .config import QuantConfig
from .errors import FlexQError
from .fisher import fisher_sensitivity
from .loading import fingerprint, load_fp_model, resolve_model
from .modules import SimQuantLinear

FILENAME = ARTIFACT_FILES["plan"]
METHODS = ("auto", "exact", "fisher")


@dataclass(frozen=True)
class AnalyzeConfig:
    a8_budget: float | None = 0.25  # fraction of linears at A8 (ignored when a8_count or kl_target is set)
    a8_count: int | None = None
    kl_target: float | None = None  # nats per token: smallest A8 set whose A6 layers' KL sum stays below it
    samples: int = 4  # calibration samples used
    seqlen: int = 512  # tokens of each sample used
    metric: str = "kl"  # "kl" or "dnll": what ranks the layers
    weight_samples: int | None = None  # calibration samples for GPTQ / output clip weights (None: all)
    method: str = "auto"  # "exact": one model-tail run per linear; "fisher": second-order estimate (fisher.py);
    # "auto": fisher in memory, exact streamed (resolve_method)
    fisher_draws: int = 4  # label draws per sample of the Fisher estimate

    def __post_init__(self):
        if self.metric not in ("kl", "dnll"):
            raise ValueError(f"metric must be 'kl' or 'dnll', got {self.metric}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.fisher_draws < 1:
            raise ValueError(f"fisher_draws must be >= 1, got {self.fisher_draws}")
        if self.a8_budget is not None and not 0.0 <= self.a8_budget <= 1.0:
            raise ValueError(f"a8_budget is a fraction in [0, 1], got {self.a8_budget}")
        if self.samples < 1 or self.seqlen < 2:
            raise ValueError("samples >= 1 and seqlen >= 2 are required")
        if self.weight_samples is not None and self.weight_samples < 1:
            raise ValueError("weight_samples must be >= 1")


class _LayerInputs:
    """Forward pre-hook that keeps each decoder layer's (hidden_states, kwargs) from the base pass."""

    def __init__(self):
        self.inputs: dict[int, tuple[torch.Tensor, dict]] = {}

    def hook(self, index: int):
        def save(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            self.inputs[index] = (hidden, rest)

        return save


class _Reference:
    """The base model's next-token distribution on one sample, kept in the form the KL needs.

    With d = logits - base_logits, KL(p || q) per position = logsumexp(log p + d) - sum p * d. Both terms are
    small and computed from small quantities, so float32 keeps them accurate (the textbook
    sum p log p - sum p * logits + logsumexp(logits) cancels terms of size ~10 and leaves ~3e-4 of noise).
    """

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor):
        self.logits = logits.float()  # (T, V)
        self.logp = torch.log_softmax(self.logits, dim=-1)
        self.p = self.logp.exp()
        self.norm = torch.logsumexp(self.logp, dim=-1)  # float32's log(sum p) != 0 residue, removed from the KL
        self.labels = labels  # (T - 1,) next tokens
        self.nll = -self.logp[:-1].gather(1, labels[:, None]).mean().item()

    def kl_and_nll(self, logits: torch.Tensor) -> tuple[float, float]:
        """Mean KL(base || this) over positions, and mean next-token NLL, of (T, V) logits."""
        d = logits.float() - self.logits
        kl = torch.logsumexp(self.logp + d, dim=-1) - self.norm - (self.p * d).sum(dim=-1)
        logp_labels = (self.logp + d)[:-1].gather(1, self.labels[:, None])[:, 0]
        lse = torch.logsumexp(self.logp[:-1] + d[:-1], dim=-1)
        return kl.mean().item(), (lse - logp_labels).mean().item()


def _head(model, spec, hidden: torch.Tensor) -> torch.Tensor:
    return model.get_submodule(spec.lm_head)(model.get_submodule(spec.final_norm)(hidden))[0]


def _run_from(model, spec, cache: _LayerInputs, start: int) -> torch.Tensor:
    """Logits (T, V) of the model run from decoder layer ``start`` on its cached input."""
    layers = decoder_layers(model, spec)
    hidden = cache.inputs[start][0]
    for i in range(start, len(layers)):
        out = layers[i](hidden, **cache.inputs[i][1])
        hidden = out[0] if isinstance(out, tuple) else out
    return _head(model, spec, hidden)


def _base_pass(model, spec, cache: _LayerInputs, ids: torch.Tensor) -> _Reference:
    """Run the base model on one sample, caching each decoder layer's input."""
    cache.inputs.clear()
    handles = [layer.register_forward_pre_hook(cache.hook(i), with_kwargs=True)
               for i, layer in enumerate(decoder_layers(model, spec))]
    try:
        logits = model(ids[None], use_cache=False).logits[0]
    finally:
        for h in handles:
            h.remove()
    return _Reference(logits, ids[1:])


@torch.no_grad()
def measure_sensitivity(model, spec, sims: dict[str, SimQuantLinear], input_ids: torch.Tensor):
    """(kl, dnll) tensors of shape (L,): each linear's damage at A6 with everything else at its own bits (A8)."""
    names = list(sims)
    kl, dnll = torch.zeros(len(names)), torch.zeros(len(names))
    cache, device = _LayerInputs(), next(model.parameters()).device
    work = [(s, j) for s in range(len(input_ids)) for j in range(len(names))]
    for s, j in ui.track(work, "measuring sensitivity", total=len(work)):
        if j == 0:
            base = _base_pass(model, spec, cache, input_ids[s].to(device))
        bits, sims[names[j]].act_bits = sims[names[j]].act_bits, 6
        try:
            logits = _run_from(model, spec, cache, layer_index(names[j], spec))
            add_score(kl, dnll, j, base, logits, len(input_ids))
        finally:
            sims[names[j]].act_bits = bits
    return kl, dnll


def add_score(kl: torch.Tensor, dnll: torch.Tensor, j: int, base: _Reference, logits: torch.Tensor,
              n: int) -> None:
    """Add one sample's KL and dNLL of linear ``j``'s (T, V) logits to its mean over ``n`` samples."""
    k, nll = base.kl_and_nll(logits)
    kl[j] += k / n
    dnll[j] += (nll - base.nll) / n


def sample_nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean next-token NLL of (T, V) logits on the (T,) sample ``ids``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.nn.functional.nll_loss(logp[:-1], ids[1:].to(logp.device)).item()


def select_a8(scores: torch.Tensor, cfg: AnalyzeConfig) -> list[int]:
    """Indices of the A8 set, highest score first."""
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    if cfg.kl_target is not None:
        remaining, chosen = scores.clamp(min=0).sum().item(), []
        for i in order:
            if remaining <= cfg.kl_target:
                break
            chosen.append(i)
            remaining -= max(scores[i].item(), 0.0)
        return chosen
    count = cfg.a8_count if cfg.a8_count is not None else round(cfg.a8_budget * len(scores))
    if not 0 <= count <= len(scores):
        raise FlexQError(f"--a8-count {count} is outside 0..{len(scores)} (the number of linears)", "pick a count in range")
    return order[:count]


@torch.no_grad()
def plan_loss(model, sims: dict[str, SimQuantLinear], input_ids: torch.Tensor, bits: dict[str, int]) -> float:
    """Mean calibration NLL with the given activation bits per linear (missing names: 6)."""
    for name, sim in sims.items():
        sim.act_bits = bits.get(name, 6)
    device = next(model.parameters()).device
    total = 0.0
    for ids in input_ids:
        total += sample_nll(model(ids[None].to(device), use_cache=False).logits[0], ids)
    for sim in sims.values():
        sim.act_bits = 8
    return total / len(input_ids)


def analyze(model_name: str, calib: Path, cfg: AnalyzeConfig, base: QuantConfig, out: Path, *,
            force: bool = False, device: str = "cpu", scores_from: Path | None = None, stream: bool = False,
            offload_dir: Path | None = None) -> dict:
    """Measure (or reuse the scores of an earlier plan), select, and write ``out/plan.safetensors`` plus
    ``plan.md`` (and ``scores.png``). ``stream``: one decoder layer in memory at a time (streaming.py), the
    same plan; ``offload_dir`` keeps its hidden states on disk."""
    if scores_from is None:
        cfg = resolve_method(cfg, stream)
        if stream and cfg.method == "fisher":
            raise FlexQError("--method fisher needs the whole model in memory (its backward passes cross every "
                             "layer)", "use --method exact with --stream, or drop --stream")
    base.check_streamable(stream)
    ref = resolve_model(model_name)
    model_fp = fingerprint(ref)
    reused = None if scores_from is None else load_plan(scores_from, model_fp)
    if reused is not None:
        cfg = _reused_method(cfg, reused[0])
    calib_manifest, calib_tensors = load_calibration(calib, model_fp)
    ids = calib_tensors["input_ids"]
    if cfg.samples > ids.shape[0] or cfg.seqlen > ids.shape[1]:
        raise FlexQError(f"--samples {cfg.samples} --seqlen {cfg.seqlen} asks for more than {calib} holds "
                         f"({ids.shape[0]} x {ids.shape[1]} tokens)", "lower them, or calibrate with more")
    ids = ids[: cfg.samples, : cfg.seqlen].long()
    reuse = None if reused is None else lambda names: _reuse_scores(scores_from, reused, names, base)
    with atomic_output_dir(out, force) as tmp:
        if stream:
            names, kl, dnll, chosen, losses = _measure_streamed(ref, cfg, base, calib_tensors, ids, device, reuse,
                                                                offload_dir)
        else:
            names, kl, dnll, chosen, losses = _measure_in_memory(ref, cfg, base, calib_tensors, ids, device, reuse)
        act_bits = {names[i]: 8 for i in chosen}
        summary = {"layers": len(names), "a8": len(chosen), "calibration_nll": losses,
                   "samples": int(ids.shape[0]), "seqlen": int(ids.shape[1]),
                   "scores_from": str(scores_from) if scores_from else None}
        manifest = Manifest(stage="plan", source=calib_manifest.source,
                            config={"analyze": asdict(cfg), "quant": base.to_dict()},
                            extra={"layers": names, "default": 6, "act_bits": act_bits, "summary": summary})
        save_artifact(tmp / FILENAME, {"kl": kl, "dnll": dnll}, manifest)
        write_report(tmp, names, kl, dnll, set(chosen), summary)
    return {"out": str(out), "names": names, "kl": kl, "dnll": dnll, "chosen": chosen, **summary}


def resolve_method(cfg: AnalyzeConfig, stream: bool) -> AnalyzeConfig:
    """``cfg`` with ``method="auto"`` made concrete: the Fisher estimate in memory, the exact runs when streamed
    (the Fisher backward passes cross every layer at once). The plan's manifest records the method used."""
    if cfg.method != "auto":
        return cfg
    return replace(cfg, method="exact" if stream else "fisher")


def _reused_method(cfg: AnalyzeConfig, manifest: Manifest) -> AnalyzeConfig:
    """``cfg`` carrying the method that measured the scores of the reused plan (its ``manifest``; plans from
    before the option measured exactly), so the new plan's manifest says how its scores were obtained."""
    measured = manifest.config.get("analyze", {})
    return replace(cfg, method=measured.get("method", "exact"), fisher_draws=measured.get("fisher_draws",
                                                                                          cfg.fisher_draws))


def _choose(kl: torch.Tensor, dnll: torch.Tensor, cfg: AnalyzeConfig) -> list[int]:
    return sorted(select_a8(kl if cfg.metric == "kl" else dnll, cfg))


def _measure_in_memory(ref, cfg: AnalyzeConfig, base: QuantConfig, calib_tensors: dict, ids: torch.Tensor,
                       device: str, reuse):
    """(names, kl, dnll, chosen, calibration NLLs) with the whole simulated model in memory."""
    model, _, spec = load_fp_model(ref, torch.float32, device)
    sims = simulated_model(model, spec, base, calib_tensors, cfg.weight_samples)
    names = list(sims)
    if reuse is not None:
        kl, dnll = reuse(names)
    elif cfg.method == "fisher":
        kl, dnll = fisher_sensitivity(model, sims, ids, cfg.fisher_draws)
    else:
        kl, dnll = measure_sensitivity(model, spec, sims, ids)
    chosen = _choose(kl, dnll, cfg)
    act_bits = {names[i]: 8 for i in chosen}
    losses = {"fp_w6a8": plan_loss(model, sims, ids, dict.fromkeys(names, 8)),
              "fp_w6a6": plan_loss(model, sims, ids, {}),
              "plan": plan_loss(model, sims, ids, act_bits)}
    return names, kl, dnll, chosen, losses


def _measure_streamed(ref, cfg: AnalyzeConfig, base: QuantConfig, calib_tensors: dict, ids: torch.Tensor,
                      device: str, reuse, offload_dir: Path | None):
    """``_measure_in_memory``, one decoder layer at a time. The scores and the all-A8 / all-A6 NLLs come from
    one pass; the plan's NLL needs the A8 set, known only after the last layer, so a second pass carries that
    one run (re-reading and re-simulating every layer, with no variants: L layer forwards)."""
    from .streaming import Run, StreamedModel, analyze_streamed

    sm = StreamedModel(ref, torch.float32, device)
    names = sm.linear_names()

    def run(whole: dict, variants: bool):
        return analyze_streamed(sm, base, calib_tensors, cfg.weight_samples, ids, whole, variants, offload_dir)

    whole = {"fp_w6a8": Run(0, 8), "fp_w6a6": Run(0, 6)}
    if reuse is None:
        (kl, dnll), losses = run(whole, variants=True)
    else:
        (kl, dnll), losses = reuse(names), {}
    chosen = _choose(kl, dnll, cfg)
    plan = {"plan": Run(0, 6, {names[i]: 8 for i in chosen})}
    _, more = run(plan if losses else {**whole, **plan}, variants=False)
    return names, kl, dnll, chosen, {**losses, **more}


def simulated_model(model, spec, base: QuantConfig, calib_tensors: dict, weight_samples: int | None):
    """Replace every decoder linear by a SimQuantLinear at A8, in place, after the same transforms the
    quantizer applies (smoothing, clip search, GPTQ): the sensitivity is measured on the model that will ship."""
    from .algorithms.sequential import prepare_quantized

    sims = {}

    def make(name, linear, codes, scales):
        sims[name] = SimQuantLinear(linear, base, 8, codes, scales)
        return sims[name]

    prepare_quantized(model, spec, base, make, calib_tensors, weight_samples)
    return {name: sims[name] for name in linear_names(model, spec)}


def _reuse_scores(plan: Path, loaded: tuple, names: list[str], base: QuantConfig):
    """Scores measured by an earlier ``flexq analyze`` of the same model (``loaded``: ``load_plan`` of ``plan``,
    checked against the model's fingerprint) and base config."""
    manifest, tensors = loaded
    if manifest.extra["layers"] != names:
        raise FlexQError(f"{plan} scores other linears than this model has", "re-run flexq analyze without --scores-from")
    if QuantConfig.from_dict(manifest.config["quant"]) != base:
        raise FlexQError(f"{plan} was measured with another base config", "use the same --preset, or re-measure")
    return tensors["kl"], tensors["dnll"]


def load_plan(path: Path, model_fingerprint: str | None = None):
    """(manifest, tensors) of a plan artifact, validated."""
    return load_artifact(path, "plan", model_fingerprint)


def write_report(folder: Path, names, kl, dnll, a8: set[int], summary: dict) -> None:
    """``plan.md`` (every linear ranked) and, when matplotlib is installed, ``scores.png``."""
    order = torch.argsort(kl, descending=True, stable=True).tolist()
    lines = [f"# Activation-bit plan: {summary['a8']} of {summary['layers']} linears at A8", "",
             f"Calibration NLL (samples {summary['samples']} x {summary['seqlen']} tokens): "
             + ", ".join(f"{k} {v:.4f}" for k, v in summary["calibration_nll"].items()), "",
             "| rank | linear | KL at A6 (nats/token) | dNLL at A6 | bits |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {r + 1} | {names[i]} | {kl[i]:.3e} | {dnll[i]:+.3e} | {8 if i in a8 else 6} |"
              for r, i in enumerate(order)]
    (folder / "plan.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(max(8, len(names) / 12), 3.5))
    ax.bar(range(len(names)), kl.tolist(), color=["tab:red" if i in a8 else "tab:blue" for i in range(len(names))])
    ax.set_yscale("log")
    ax.set_xlabel("decoder linear (layer order; red = A8)")
    ax.set_ylabel("KL at A6 (nats/token)")
    fig.tight_layout()
    fig.savefig(folder / "scores.png", dpi=110)
    plt.close(fig)
