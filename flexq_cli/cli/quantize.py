from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import ui
from ..quantize import quantize
from .options import Device, Force, Model, OffloadDir, Out, Stream, parse_device, parse_offload_dir


def command(
    model: Model,
    out: Out,
    plan: Annotated[Optional[Path], typer.Option(help="Output of flexq analyze (per-layer activation bits).")] = None,
    preset: Annotated[Optional[str], typer.Option(
        help="w6a8, w6a6, flexq-rtn, flexq, flexq-stream, w6a8-best, w6a6-best (configs/presets), or a YAML file "
             "(default w6a8); flexq, flexq-stream and the -best presets need --calib.")] = None,
    calib: Annotated[Optional[Path], typer.Option(help="Output of flexq calibrate: needed by GPTQ, the output clip "
                                                   "search, smoothing and norm tuning.")] = None,
    calib_samples: Annotated[Optional[int], typer.Option(help="Calibration samples used (default: all).")] = None,
    device: Device = "cpu",
    force: Force = False,
    stream: Stream = False,
    offload_dir: OffloadDir = None,
):
    """Quantize the decoder linears to packed INT6 and write a self-contained model directory."""
    r = quantize(model, out, preset=preset, plan=plan, calib=calib, calib_samples=calib_samples, force=force,
                 device=parse_device(device), stream=stream, offload_dir=parse_offload_dir(stream, offload_dir))
    per_param = (r.packed_bytes + r.scale_bytes) / r.params
    ui.out.print(f"quantized {r.layers} linears ({r.a8_layers} at A8, {r.layers - r.a8_layers} at A6): "
                 f"{r.params / 1e6:.1f}M weights in {r.packed_bytes / 1e6:.1f} MB packed + {r.scale_bytes / 1e6:.2f} MB "
                 f"scales = {per_param:.4f} B/weight -> {r.out}")
    if r.zero_groups:
        ui.err.print(f"note: {r.zero_groups} weight groups were all zero (scale 0, dequantize to exact zeros)")
