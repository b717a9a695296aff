from __future__ import annotations

from typing import Annotated

import typer

from .. import ui
from ..calibrate import CalibConfig, calibrate
from .options import (Device, Dtype, Force, Model, OffloadDir, Out, Seqlen, Stream, parse_device, parse_dtype,
                      parse_offload_dir)

_D = CalibConfig()


def command(
    model: Model,
    out: Out,
    data: Annotated[str, typer.Option(help="wikitext2 (train split), c4, or a text file.")] = _D.data,
    samples: Annotated[int, typer.Option(help="Number of calibration sequences.")] = _D.samples,
    seqlen: Seqlen = _D.seqlen,
    seed: Annotated[int, typer.Option(help="Seed of the sample positions.")] = _D.seed,
    offset_tokens: Annotated[int, typer.Option(help="Skip this many tokens at the start of the text.")] = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    force: Force = False,
    stream: Stream = False,
    offload_dir: OffloadDir = None,
):
    """Sample calibration text and record each decoder linear's input statistics."""
    cfg = CalibConfig(data=data, samples=samples, seqlen=seqlen, seed=seed, offset_tokens=offset_tokens)
    summary = calibrate(model, cfg, out, force=force, device=parse_device(device), dtype=parse_dtype(dtype),
                        stream=stream, offload_dir=parse_offload_dir(stream, offload_dir))
    ui.out.print(f"calibration: {summary['samples']} x {summary['seqlen']} tokens, {summary['layers']} linears "
                 f"-> {summary['out']}")
