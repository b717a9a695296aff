from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import ui
from ..analyze import AnalyzeConfig, analyze
from ..config import load_preset
from .options import Device, Force, Model, OffloadDir, Out, Stream, parse_device, parse_offload_dir

_D = AnalyzeConfig()


def command(
    model: Model,
    calib: Annotated[Path, typer.Option(help="Output of flexq calibrate.")],
    out: Out,
    a8_budget: Annotated[float, typer.Option(help="Fraction of linears kept at 8-bit activations.")] = 0.25,
    a8_count: Annotated[Optional[int], typer.Option(help="Number of A8 linears (overrides --a8-budget).")] = None,
    kl_target: Annotated[Optional[float], typer.Option(help="Smallest A8 set whose A6 layers' KL sum <= this.")] = None,
    samples: Annotated[int, typer.Option(help="Calibration samples measured.")] = _D.samples,
    seqlen: Annotated[int, typer.Option(help="Tokens of each sample measured.")] = _D.seqlen,
    metric: Annotated[str, typer.Option(help="Ranking score: kl (final-logit KL) or dnll (calibration loss).")] = "kl",
    preset: Annotated[str, typer.Option(help="Base quantization config (group sizes, smoothing, weight algorithm) "
                                              "to measure with.")] = "w6a8",
    weight_samples: Annotated[Optional[int], typer.Option(help="Calibration samples for GPTQ / output-clip weights "
                                                                "(default: all).")] = None,
    method: Annotated[str, typer.Option(help="exact (re-run the model tail per linear), fisher (second-order "
                                              "estimate from one forward and a few backwards per sample; not "
                                              "with --stream) or auto (fisher, or exact with --stream).")] = _D.method,
    fisher_draws: Annotated[int, typer.Option(help="With --method fisher: label draws per sample.")] = _D.fisher_draws,
    scores_from: Annotated[Optional[Path], typer.Option(help="Reuse the scores of an earlier plan (re-budget without re-measuring).")] = None,
    show: Annotated[int, typer.Option(help="Rows of the ranking to print.")] = 15,
    device: Device = "auto",
    force: Force = False,
    stream: Stream = False,
    offload_dir: OffloadDir = None,
):
    """Measure each linear's sensitivity to 6-bit activations and choose the A8 set under a budget.

    With --stream each decoder layer is read once and carries one hidden-state set per linear begun before it:
    the same plan, compute-heavy (about 7L^2/2 layer forwards per sample; docs/scale.md)."""
    cfg = AnalyzeConfig(a8_budget=a8_budget, a8_count=a8_count, kl_target=kl_target, samples=samples,
                        seqlen=seqlen, metric=metric, weight_samples=weight_samples, method=method,
                        fisher_draws=fisher_draws)
    r = analyze(model, calib, cfg, load_preset(preset), out, force=force, device=parse_device(device),
                scores_from=scores_from, stream=stream, offload_dir=parse_offload_dir(stream, offload_dir))
    table = Table(title=f"most sensitive linears ({r['a8']} of {r['layers']} at A8)")
    for col in ("rank", "linear", "KL at A6", "dNLL at A6", "bits"):
        table.add_column(col, justify="left" if col == "linear" else "right")
    scores = r["kl"] if metric == "kl" else r["dnll"]
    order = scores.argsort(descending=True).tolist()
    chosen = set(r["chosen"])
    for rank, i in enumerate(order[:show]):
        table.add_row(str(rank + 1), r["names"][i], f"{r['kl'][i]:.3e}", f"{r['dnll'][i]:+.3e}", "8" if i in chosen else "6")
    ui.out.print(table)
    nll = r["calibration_nll"]
    ui.out.print(f"calibration NLL: all A8 {nll['fp_w6a8']:.4f}, all A6 {nll['fp_w6a6']:.4f}, plan {nll['plan']:.4f}"
                 f" -> {r['out']} (plan.safetensors, plan.md)")
