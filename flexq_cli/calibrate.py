"""``flexq calibrate``: tokenized calibration samples and per-linear input statistics, as one artifact.

Artifact ``calibration.safetensors``:
  input_ids                    (samples, seqlen) int32, the exact samples later stages reuse
  <linear>.absmax              (K,) float32 per-input-channel absolute maximum over all tokens
  <linear>.meanabs             (K,) float32 per-input-channel mean |x|
  <linear>.token_absmax        (5,) float32 quantiles (0, 1, 50, 99, 100 %) of the per-token absmax
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import ui
from .arch import linear_names
from .artifacts import ARTIFACT_FILES, Manifest, atomic_output_dir, save_artifact
from .data import calibration_samples, load_text, tokenize
from .errors import NonFiniteError
from .loading import check_seqlen, default_dtype, fingerprint, load_fp_model, resolve_model

FILENAME = ARTIFACT_FILES["calibration"]
TOKEN_QUANTILES = (0.0, 0.01, 0.5, 0.99, 1.0)


@dataclass(frozen=True)
class CalibConfig:
    data: str = "wikitext2"
    samples: int = 128
    seqlen: int = 2048
    seed: int = 0
    offset_tokens: int = 0  # skip this many tokens at the start of the text (keep eval windows out)

    def __post_init__(self):
        if self.samples < 1 or self.seqlen < 2 or self.offset_tokens < 0:
            raise ValueError("samples >= 1, seqlen >= 2 and offset_tokens >= 0 are required")


class _InputStats:
    """Running statistics of one linear's input: (K,) absmax and sum |x|, and per-token absmax values (up to
    ``tokens`` of them, in one buffer allocated up front, and the sums updated in place: thousands of small tensors
    kept between the forward passes' large temporaries pinned glibc's heap, ~0.6 GB more per 2048-token sample)."""

    def __init__(self, name: str, tokens: int):
        self.name, self.absmax, self.sumabs, self.tokens = name, None, None, 0
        self.token_absmax = torch.empty(tokens, dtype=torch.float16)

    def __call__(self, module, args):
        x = args[0].detach().float().reshape(-1, args[0].shape[-1])
        per_token = x.abs().amax(dim=1)
        if not torch.isfinite(per_token).all():
            raise NonFiniteError(f"NaN/Inf activations reach {self.name} during calibration",
                                 "the model overflows in this dtype: try --dtype float32 or bfloat16")
        amax, sabs = x.abs().amax(dim=0), x.abs().sum(dim=0)
        if self.absmax is None:
            self.absmax, self.sumabs = amax, sabs
        else:
            torch.maximum(self.absmax, amax, out=self.absmax)
            self.sumabs.add_(sabs)
        self.token_absmax[self.tokens : self.tokens + x.shape[0]] = per_token.cpu()
        self.tokens += x.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        q = torch.quantile(self.token_absmax[: self.tokens].float(), torch.tensor(TOKEN_QUANTILES))
        return {f"{self.name}.absmax": self.absmax.cpu(), f"{self.name}.meanabs": (self.sumabs / self.tokens).cpu(),
                f"{self.name}.token_absmax": q}


@torch.no_grad()
def collect_stats(model, spec, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run every sample through the model once, with hooks on each decoder linear's input."""
    stats, handles = {}, []
    for name in linear_names(model, spec):
        stats[name] = _InputStats(name, input_ids.numel())
        handles.append(model.get_submodule(name).register_forward_pre_hook(stats[name]))
    device = next(model.parameters()).device
    try:
        for row in ui.track(input_ids, "calibrating", total=len(input_ids)):
            model(row[None].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {k: v for s in stats.values() for k, v in s.tensors().items()}


def calibrate(model_name: str, cfg: CalibConfig, out: Path, *, force: bool = False, device: str = "cpu",
              dtype: torch.dtype | None = None, stream: bool = False, offload_dir: Path | None = None) -> dict:
    """Sample, run, and write ``out/calibration.safetensors``. Returns a summary for the CLI. ``stream``: one
    decoder layer in memory at a time (streaming.py; the same statistics), ``offload_dir`` for the activations."""
    ref = resolve_model(model_name)
    text = load_text(cfg.data, "train")
    dtype = dtype or default_dtype(device)
    with atomic_output_dir(out, force) as tmp:
        if stream:
            from .streaming import StreamedModel, collect_stats_streamed

            sm = StreamedModel(ref, dtype, device)
            model, tokenizer, spec = sm.model, sm.tokenizer(), sm.spec
        else:
            model, tokenizer, spec = load_fp_model(ref, dtype, device)
        check_seqlen(model.config, cfg.seqlen)
        ids = calibration_samples(tokenize(tokenizer, text), cfg.samples, cfg.seqlen, cfg.seed, cfg.offset_tokens)
        tensors = collect_stats_streamed(sm, ids, offload_dir) if stream else collect_stats(model, spec, ids)
        tensors["input_ids"] = ids.to(torch.int32)
        manifest = Manifest(stage="calibration", source={"model": ref.model_id, "fingerprint": fingerprint(ref)},
                            config=asdict(cfg), extra={"layers": linear_names(model, spec)})
        save_artifact(tmp / FILENAME, tensors, manifest)
    return {"model": ref.model_id, "out": str(out), "samples": cfg.samples, "seqlen": cfg.seqlen,
            "layers": len(manifest.extra["layers"])}


def load_calibration(path: Path, model_fingerprint: str | None = None):
    """(manifest, tensors) of a calibration artifact, validated (stage, schema, model, digest)."""
    from .artifacts import load_artifact

    return load_artifact(path, "calibration", model_fingerprint)
