"""Layer-by-layer ("streamed") calibrate and quantize: models larger than memory, one decoder layer at a time.

The model is built on the meta device (no weights); the embeddings are read to compute every calibration
sample's input to decoder layer 0; then each decoder layer in turn is read from the source safetensors shards
(each tensor through its own memory map, closed after the read), run on the cached hidden states of all
samples, quantized (or its input statistics collected), written, and put back on the meta device. Resident
memory is about one layer in the compute dtype (float32 on the CPU: twice its 16-bit size) plus the hidden
states, whatever the depth; ``offload_dir`` keeps the hidden states on disk, one file per sample.

The results are the full-model path's, bit for bit: each layer sees the same inputs (the decoder layer is
replayed with the keyword arguments the model passed it) and runs the same functions (calibrate._InputStats,
algorithms.sequential, algorithms.smooth, modules.QuantLinear); only the order of the work differs.
Round-to-nearest weights are quantized and packed in row chunks (both are row-wise, so the codes are the
same): packing a 70B MLP weight at once takes ~48 bytes per weight of temporaries.

The quantized directory is written tensor by tensor into shard files whose layout is planned up front from
the shapes (``ShardWriter``): the same tensor names, shards and manifests as ``quantize.save_quantized``.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import ui
from .arch import decoder_layers, layer_index, linear_names, spec_for_config
from .artifacts import Manifest, tensor_digest
from .errors import FlexQError
from .loading import ModelRef, gguf_converted_dir
from .packing import ROW_GROUP

READ_CHUNK_BYTES = 64 << 20  # checkpoint bytes per read: bounds the mapped pages and the cast's temporaries
ROW_CHUNK_ELEMENTS = 1 << 22  # weights per packing chunk: pack_weight holds ~48 bytes of temporaries each
HEADER_RESERVE = 1 << 16  # bytes kept in each shard header for the manifest, written last


# --- reading the source -------------------------------------------------------------------------------------

def source_dir(ref: ModelRef) -> Path:
    """The safetensors directory of a full-precision model (a GGUF is converted once, as the full path does)."""
    if ref.kind == "quantized":
        raise FlexQError(f"{ref.path} is already quantized", "pass the full-precision model")
    return gguf_converted_dir(ref) if ref.kind == "gguf" else ref.path


class SourceWeights:
    """Tensor name -> shard file of a safetensors checkpoint. Every read opens its own memory map and closes
    it, so the resident memory holds only the tensors the caller keeps, never the mapped shard pages."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: directory / file for name, file in weight_map.items()}
        else:
            self.files = {}
            for file in sorted(directory.glob("*.safetensors")):
                with safe_open(str(file), "pt") as fh:
                    self.files.update(dict.fromkeys(fh.keys(), file))
        if not self.files:
            raise FlexQError(f"--stream reads safetensors checkpoints, and {directory} has none",
                             "convert the checkpoint to safetensors, or drop --stream")

    def read(self, name: str, dtype: torch.dtype | None = None, device: str = "cpu") -> torch.Tensor:
        """Tensor ``name`` cast to ``dtype`` (None: as stored), read in row chunks of READ_CHUNK_BYTES, each
        through its own short-lived memory map: neither a second full-size copy nor the mapped pages stay."""
        from safetensors import safe_open

        if name not in self.files:
            raise FlexQError(f"tensor {name} is missing from the checkpoint", "the checkpoint is incomplete")
        path = str(self.files[name])
        with safe_open(path, "pt") as fh:
            part = fh.get_slice(name)
            shape, stored = tuple(part.get_shape()), _stored_types()[part.get_dtype()]
            cast = dtype if dtype is not None and stored.is_floating_point else stored
            if not shape or shape[0] == 0:
                return fh.get_tensor(name).to(device=device, dtype=cast)
        out = torch.empty(shape, dtype=cast, device=device)
        step = max(1, READ_CHUNK_BYTES // max(1, math.prod(shape[1:]) * stored.itemsize))
        for r0 in range(0, shape[0], step):
            with safe_open(path, "pt") as fh:
                out[r0 : r0 + step] = fh.get_slice(name)[r0 : r0 + step]
        return out

    def load(self, module: torch.nn.Module, prefix: str, dtype: torch.dtype | None, device: str) -> None:
        """Give the meta-device ``module`` its weights ``prefix.*`` from the checkpoint, cast to ``dtype`` (None:
        as stored)."""
        state = {key: self.read(f"{prefix}.{key}", dtype, device) for key in module.state_dict()}
        module.load_state_dict(state, strict=True, assign=True)


class StreamedModel:
    """A model skeleton on the meta device plus its checkpoint: weights are read per module when needed."""

    def __init__(self, ref: ModelRef, dtype: torch.dtype, device: str = "cpu"):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.directory, self.dtype, self.device = source_dir(ref), dtype, device
        config = AutoConfig.from_pretrained(self.directory)
        self.spec = spec_for_config(config)
        with torch.device(device), init_empty_weights(include_buffers=False):  # buffers (rotary) are computed
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
        self.source = SourceWeights(self.directory)
        self.layers = decoder_layers(self.model, self.spec)

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.directory)

    def generation_config(self):
        from transformers import GenerationConfig

        try:
            return GenerationConfig.from_pretrained(self.directory)
        except OSError:  # no generation_config.json: the one derived from the model config, as from_pretrained
            return self.model.generation_config

    def linear_names(self) -> list[str]:
        return linear_names(self.model, self.spec)

    @contextlib.contextmanager
    def loaded(self, name: str, dtype: torch.dtype | None):
        """The submodule ``name`` with its weights in ``dtype`` (None: as stored) for the duration of the block,
        then back on the meta device."""
        module = self.model.get_submodule(name)
        self.source.load(module, name, dtype, self.device)
        try:
            yield module
        finally:
            module.to("meta")

    def layer_inputs(self, input_ids: torch.Tensor, store: "Activations") -> None:
        """Append each (seqlen,) sample's decoder-layer-0 (hidden_states, kwargs) to ``store``."""
        from .algorithms.sequential import first_layer_inputs

        embed = self.model.get_input_embeddings()
        embed_name = next(n for n, m in self.model.named_modules() if m is embed)
        with self.loaded(embed_name, self.dtype):
            for row in ui.track(input_ids, "embedding samples", total=len(input_ids)):
                store.append(*first_layer_inputs(self.model, self.spec, row[None])[0])


# --- the hidden states between layers -----------------------------------------------------------------------

class Activations:
    """The calibration samples' hidden states at the current decoder layer, with the layer's other arguments.

    In memory, or with ``offload_dir`` one safetensors file per sample in a private folder inside it (removed
    by ``close``): then only one sample's input and output are resident at a time.
    """

    def __init__(self, device: str = "cpu", offload_dir: Path | None = None):
        self.device, self.kwargs, self.hidden, self.generation = device, [], [], 0
        self.folder = None if offload_dir is None else Path(tempfile.mkdtemp(prefix="flexq-acts-", dir=offload_dir))

    def _file(self, i: int, generation: int) -> Path:
        return self.folder / f"{generation}-{i}.safetensors"

    def _put(self, i: int, hidden: torch.Tensor, generation: int) -> None:
        from safetensors.torch import save_file

        if self.folder is None:
            self.hidden[i] = hidden
        else:
            save_file({"hidden": hidden.contiguous().cpu()}, str(self._file(i, generation)))

    def append(self, hidden: torch.Tensor, kwargs: dict) -> None:
        self.kwargs.append(kwargs)
        self.hidden.append(None)
        self._put(len(self.kwargs) - 1, hidden, self.generation)

    def __len__(self) -> int:
        return len(self.kwargs)

    def get(self, i: int) -> torch.Tensor:
        """Sample ``i``'s hidden states (read back from its file when offloaded)."""
        from safetensors.torch import load_file

        if self.folder is None:
            return self.hidden[i]
        return load_file(str(self._file(i, self.generation)), device=self.device)["hidden"]

    def __iter__(self):
        """(hidden_states, kwargs) of each sample, read back one at a time when offloaded."""
        for i, kwargs in enumerate(self.kwargs):
            yield self.get(i), kwargs

    @torch.no_grad()
    def advance(self, layer: torch.nn.Module, keep: bool = True) -> None:
        """Run ``layer`` on every sample; its outputs become the stored states (``keep`` False: discarded)."""
        for i, (hidden, kwargs) in enumerate(self):
            out = layer(hidden, **kwargs)
            if keep:
                self._put(i, out[0] if isinstance(out, tuple) else out, self.generation + 1)
            if self.folder is not None:
                self._file(i, self.generation).unlink()
        self.generation += 1

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def activation_store(device: str, offload_dir: Path | None, tokens: int, hidden_size: int):
    """An ``Activations`` store; ``offload_dir`` is checked first (a directory we can write, with room for two
    layers' worth of float32 hidden states)."""
    if offload_dir is not None:
        check_offload_dir(Path(offload_dir), 2 * tokens * hidden_size * 4)
    store = Activations(device, offload_dir)
    try:
        yield store
    finally:
        store.close()


def check_offload_dir(path: Path, need_bytes: int) -> None:
    import os

    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise FlexQError(f"--offload-dir {path} is not a writable directory",
                         "create it first, or pass an existing directory on a disk with room for the activations")
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise FlexQError(f"--offload-dir {path} has {free / 1e9:.1f} GB free; the activations need "
                         f"{need_bytes / 1e9:.1f} GB", "pass a directory on a larger disk, or fewer --samples")


# --- calibrate ----------------------------------------------------------------------------------------------

@torch.no_grad()
def collect_stats_streamed(sm: StreamedModel, input_ids: torch.Tensor,
                           offload_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """``calibrate.collect_stats``, one decoder layer at a time: the same statistics, bit for bit."""
    from .calibrate import _InputStats

    stats = {}
    hidden = sm.model.config.hidden_size
    with activation_store(sm.device, offload_dir, input_ids.numel(), hidden) as acts:
        sm.layer_inputs(input_ids, acts)
        for i in ui.track(range(len(sm.layers)), "calibrating layers"):
            prefix = f"{sm.spec.layers}.{i}"
            with sm.loaded(prefix, sm.dtype) as layer:
                handles = []
                for rel in sm.spec.linears:
                    stats[f"{prefix}.{rel}"] = _InputStats(f"{prefix}.{rel}", input_ids.numel())
                    handles.append(layer.get_submodule(rel).register_forward_pre_hook(stats[f"{prefix}.{rel}"]))
                try:
                    acts.advance(layer, keep=i + 1 < len(sm.layers))
                finally:
                    for h in handles:
                        h.remove()
    return {k: v for s in stats.values() for k, v in s.tensors().items()}


# --- quantize -----------------------------------------------------------------------------------------------

def _row_chunks(n_rows: int, k: int):
    step = max(1, ROW_CHUNK_ELEMENTS // max(k, 1) // ROW_GROUP) * ROW_GROUP  # whole groups of the packed layout
    return [(r, min(r + step, n_rows)) for r in range(0, n_rows, step)]


def _rows_of(linear: torch.nn.Linear, r0: int, r1: int) -> torch.nn.Linear:
    """A Linear viewing rows r0:r1 of ``linear`` (no copy)."""
    part = torch.nn.Linear(linear.in_features, r1 - r0, bias=linear.bias is not None, device="meta")
    part.weight = torch.nn.Parameter(linear.weight.detach()[r0:r1], requires_grad=False)
    if linear.bias is not None:
        part.bias = torch.nn.Parameter(linear.bias.detach()[r0:r1], requires_grad=False)
    return part


def quantize_linear_chunked(name: str, linear: torch.nn.Linear, config, codes=None, scales=None):
    """``QuantLinear.from_linear`` in row chunks (codes and scales chosen per chunk when not given: exact for
    round-to-nearest, which is row-wise). Same buffers as one call on the whole weight, bounded temporaries."""
    from .algorithms.sequential import weight_codes
    from .modules import INPUT_ROTATION, QuantLinear

    bits = config.act_bits_for(name)
    rotation = getattr(linear, INPUT_ROTATION, None)
    out = None
    for r0, r1 in _row_chunks(linear.out_features, linear.in_features):
        part = _rows_of(linear, r0, r1)
        c, s = weight_codes(part, config) if codes is None else (codes[r0:r1], scales[r0:r1])
        piece = QuantLinear.from_linear(part, bits, config, name, c, s)
        if out is None:
            out = QuantLinear(linear.in_features, linear.out_features, bias=linear.bias is not None, act_bits=bits,
                              weight_group_size=config.weight_group_size, act_group_size=config.act_group_size,
                              dtype=piece.bias.dtype if piece.bias is not None else torch.float16,
                              device=linear.weight.device, rotate_input=rotation is not None)
            if rotation is not None:
                out.rotation.copy_(rotation)
        out.qweight[r0:r1], out.scales[r0:r1] = piece.qweight, piece.scales
        if piece.bias is not None:
            out.bias[r0:r1] = piece.bias
    return out


class _OneLayerView(torch.nn.Module):
    """A model-shaped holder of one decoder layer (at index 0 of ``spec.layers``), with the model's config: lets
    the whole-model smoothing function fold one layer at a time."""

    def __init__(self, layer: torch.nn.Module, spec, config):
        super().__init__()
        self.config = config
        parent = self
        *path, last = spec.layers.split(".")
        for part in path:
            parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        parent.add_module(last, torch.nn.ModuleList([layer]))


def smooth_layer(sm: StreamedModel, i: int, layer, absmax: dict, alpha: float) -> dict[str, float]:
    """``smooth.smooth_model`` on decoder layer ``i`` alone; returns its log2 spread per group kind."""
    from .algorithms.smooth import smooth_model

    prefix, view_prefix = f"{sm.spec.layers}.{i}.", f"{sm.spec.layers}.0."
    local = {view_prefix + k[len(prefix):]: v for k, v in absmax.items() if k.startswith(prefix)}
    return smooth_model(_OneLayerView(layer, sm.spec, sm.model.config), sm.spec, local, alpha)


@torch.no_grad()
def quantize_layer(sm: StreamedModel, i: int, layer, config, acts: "Activations | None",
                   chosen: dict | None = None) -> dict[str, torch.nn.Module]:
    """Relative name -> QuantLinear for every linear of decoder layer ``i`` (float32, loaded). With ``acts``
    (GPTQ, output clip search): Hessians from the float layer, then the layer is rerun with simulated
    quantized linears to give the next layer its inputs, as ``sequential.quantize_sequential`` does."""
    from .algorithms.sequential import layer_statistics, weight_codes
    from .modules import SimQuantLinear, replace_module

    chunked = config.weight_clip == "none" and not config.gptq and not config.smooth_search
    hessians = ({} if acts is None else
                layer_statistics(layer, sm.spec, config, sm.model.config, f"{sm.spec.layers}.{i}.", acts, chosen))
    finals = {}
    for group in sm.spec.groups:
        for rel in group.linears:
            name, linear = f"{sm.spec.layers}.{i}.{rel}", layer.get_submodule(rel)
            codes, scales = (None, None) if chunked else weight_codes(linear, config, hessians.get(group.linears[0]))
            finals[rel] = quantize_linear_chunked(name, linear, config, codes, scales)
            if acts is not None:
                replace_module(layer, rel, SimQuantLinear(linear, config, config.act_bits_for(name), codes, scales))
            else:
                replace_module(layer, rel, finals[rel])  # frees the float weight at once
    del hessians
    if acts is not None:
        acts.advance(layer, keep=i + 1 < len(sm.layers))
    for rel, module in finals.items():
        replace_module(layer, rel, module)
    return finals


@torch.no_grad()
def quantize_streamed(ref: ModelRef, config, folder: Path, manifest_for, calib: dict | None = None,
                      samples: int | None = None, device: str = "cpu", max_shard_bytes: int | None = None,
                      offload_dir: Path | None = None):
    """``quantize.quantize_model`` + ``save_quantized``, one decoder layer at a time, into ``folder``.
    ``manifest_for(keep_dtype, linear_names, algorithms_summary)`` builds the manifest written into every
    shard. Returns the ``QuantizeResult`` (its ``out`` left empty)."""
    from .quantize import QuantizeResult, cast_unquantized, keep_dtype_for, output_plan, save_side_files

    sm = StreamedModel(ref, torch.float32, device)
    keep = keep_dtype_for(sm.model.config)
    writer = ShardWriter(folder, output_plan(sm.model.config, config, keep, max_shard_bytes))
    totals, spreads, summary = dict.fromkeys(("params", "packed", "scales", "zero", "a8"), 0), {}, {}
    chosen: dict[str, list] = {}  # the smoothing search's alphas per group kind
    with contextlib.ExitStack() as stack:
        acts = None
        if config.needs_activations:
            ids = calib["input_ids"][:samples].long()
            acts = stack.enter_context(activation_store(device, offload_dir, ids.numel(), sm.model.config.hidden_size))
            sm.layer_inputs(ids, acts)
            summary["calibration_tokens"] = int(ids.numel())
        # Round to nearest reads the weights as stored (16-bit: half the float32 memory; the codes are the same).
        dtype = torch.float32 if config.needs_calibration else None
        for i in ui.track(range(len(sm.layers)), "quantizing layers"):
            with sm.loaded(f"{sm.spec.layers}.{i}", dtype) as layer:
                start = time.perf_counter()
                if config.smooth_alpha is not None:
                    absmax = {name: calib[f"{name}.absmax"] for name in sm.linear_names()}
                    for kind, value in smooth_layer(sm, i, layer, absmax, config.smooth_alpha).items():
                        spreads.setdefault(kind, []).append(value)
                    summary["smooth_seconds"] = summary.get("smooth_seconds", 0.0) + time.perf_counter() - start
                _count(totals, quantize_layer(sm, i, layer, config, acts, chosen).values())
                cast_unquantized(layer, keep)
                for key, t in layer.state_dict(prefix=f"{sm.spec.layers}.{i}.").items():
                    writer.write(key, t)
    for key in writer.pending():  # embeddings, final norm, an untied lm_head: 16-bit copies
        writer.write(key, sm.source.read(key, keep))
    if config.smooth_search:
        from .algorithms.sequential import search_summary

        summary["smooth_search"] = search_summary(chosen)
    if spreads:
        summary["smooth_log2_spread"] = {k: sum(v) / len(v) for k, v in spreads.items()}
        summary["smooth_seconds"] = round(summary["smooth_seconds"], 2)
    summary["stream"] = {"offload": offload_dir is not None}
    save_side_files(folder, sm.model.config, sm.generation_config(), sm.tokenizer(), config)
    writer.finish(manifest_for(keep, sm.linear_names(), summary))
    return QuantizeResult("", len(sm.linear_names()), totals["a8"], totals["params"], totals["packed"],
                          totals["scales"], totals["zero"])


def _count(totals: dict, modules) -> None:
    for m in modules:
        totals["params"] += m.in_features * m.out_features
        totals["packed"] += m.qweight.numel() * 4
        totals["scales"] += m.scales.numel() * 2
        totals["zero"] += int((m.scales == 0).sum())
        totals["a8"] += m.act_bits == 8


# --- analyze ------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One hidden-state set carried through the decoder layers: it leaves the base run's hidden states at
    decoder layer ``start`` (0: the embeddings) and runs with ``bits`` per linear (missing names: ``default``)."""

    start: int
    default: int
    bits: dict[str, int] = field(default_factory=dict)
    states: "Activations | None" = None

    def set_bits(self, sims: dict[str, torch.nn.Module]) -> None:
        for name, sim in sims.items():
            sim.act_bits = self.bits.get(name, self.default)


@contextlib.contextmanager
def simulated_layer(sm: StreamedModel, i: int, layer, config, calib: dict | None, calib_acts: "Activations | None"):
    """``analyze.simulated_model`` on decoder layer ``i`` (float32, loaded) for the block: smoothing, the weight
    codes (GPTQ and the output clip search from ``calib_acts``, advanced as ``quantize_layer`` does) and a
    SimQuantLinear at A8 in place of every linear. Yields full name -> SimQuantLinear; afterwards the layer has
    its linears back, on the meta device, so that it can be read again."""
    from .algorithms.sequential import layer_statistics
    from .modules import SimQuantLinear, replace_module

    prefix = f"{sm.spec.layers}.{i}."
    if config.smooth_alpha is not None:
        smooth_layer(sm, i, layer, {prefix + r: calib[f"{prefix}{r}.absmax"] for r in sm.spec.linears},
                     config.smooth_alpha)
    hessians = ({} if calib_acts is None else
                layer_statistics(layer, sm.spec, config, sm.model.config, prefix, calib_acts))
    sims, linears = {}, {}
    for group in sm.spec.groups:
        for rel in group.linears:
            linears[rel] = linear = layer.get_submodule(rel)
            codes, scales = _layer_codes(linear, config, hessians.get(group.linears[0]))
            sims[prefix + rel] = SimQuantLinear(linear, config, config.act_bits_for(prefix + rel), codes, scales,
                                                lazy=True)  # codes, not a float32 copy: one layer stays ~2x
            replace_module(layer, rel, sims[prefix + rel])
            linear.to("meta")  # frees the float weight
    del hessians
    try:
        if calib_acts is not None:  # the next layer's GPTQ / clip inputs, at the config's bits as in memory
            calib_acts.advance(layer, keep=i + 1 < len(sm.layers))
        for sim in sims.values():
            sim.act_bits = 8
        yield sims
    finally:
        for rel, linear in linears.items():
            replace_module(layer, rel, linear)


def _layer_codes(linear: torch.nn.Linear, config, hessian: torch.Tensor | None):
    """``weight_codes``, in row chunks where the algorithm is row-wise (round to nearest, the MSE clip search):
    the same codes and scales with bounded temporaries (a 70B down_proj is 235 M weights)."""
    from .algorithms.sequential import weight_codes

    if config.gptq or config.weight_clip == "output":
        return weight_codes(linear, config, hessian)
    parts = [weight_codes(_rows_of(linear, r0, r1), config) for r0, r1 in _row_chunks(linear.out_features,
                                                                                          linear.in_features)]
    return torch.cat([c for c, _ in parts]), torch.cat([s for _, s in parts])


def _carry(layer, i: int, sims: dict, runs: list[Run], new_store) -> None:
    """Decoder layer ``i`` for every run: first the runs that start here (on the base run's input, each sample
    read once for all of them), then every older run and the base, in place."""
    base, starting = runs[0], [r for r in runs[1:] if r.start == i]
    for r in starting:
        r.states = new_store()
    for s, kwargs in enumerate(base.states.kwargs):
        hidden = base.states.get(s)
        for r in starting:
            r.set_bits(sims)
            out = layer(hidden, **kwargs)
            r.states.append(out[0] if isinstance(out, tuple) else out, kwargs)
    for r in [base] + [r for r in runs[1:] if r.start < i]:
        r.set_bits(sims)
        r.states.advance(layer)


@torch.no_grad()
def carry_runs(sm: StreamedModel, config, calib: dict, weight_samples: int | None, input_ids: torch.Tensor,
               runs: list[Run], folder: Path | None) -> None:
    """Every run through every decoder layer, each layer read from the shards once and simulated as
    ``analyze.simulated_model`` does; afterwards each run's ``states`` hold its final hidden states (in
    ``folder`` when offloaded). ``runs[0]``, the base, starts at layer 0; the others leave it at their ``start``."""
    calib_acts = None
    if config.needs_activations:
        calib_acts = Activations(sm.device, folder)
        sm.layer_inputs(calib["input_ids"][:weight_samples].long(), calib_acts)
    runs[0].states = Activations(sm.device, folder)
    sm.layer_inputs(input_ids, runs[0].states)
    # Without smoothing or Hessians nothing computes with the float weights but the codes (each linear upcast on
    # its own, exactly) and every linear becomes a float32 SimQuantLinear: the layer can stay in its stored 16 bits
    # (the norms' 16-bit weights times float32 states promote exactly), so one 70B layer costs 1x, not 2x.
    dtype = torch.float32 if config.needs_calibration else None
    for i in ui.track(range(len(sm.layers)), "measuring layers"):
        with sm.loaded(f"{sm.spec.layers}.{i}", dtype) as layer:
            with simulated_layer(sm, i, layer, config, calib, calib_acts) as sims:
                _carry(layer, i, sims, runs, lambda: Activations(sm.device, folder))
            del sims  # the simulated weights go before the next layer is read
    if calib_acts is not None:
        calib_acts.close()


@contextlib.contextmanager
def runs_folder(offload_dir: Path | None, need_bytes: int):
    """None (the runs' hidden states in memory), or a private folder inside ``offload_dir`` for them, checked
    for room first and removed at the end."""
    if offload_dir is None:
        yield None
        return
    check_offload_dir(Path(offload_dir), need_bytes)
    folder = Path(tempfile.mkdtemp(prefix="flexq-analyze-", dir=offload_dir))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def loaded_head(sm: StreamedModel):
    """The final norm and ``lm_head`` in float32 for the block (a tied ``lm_head`` reads the embedding)."""
    embed = sm.model.get_input_embeddings()
    embed_name = next(n for n, m in sm.model.named_modules() if m is embed)
    norm, head = sm.model.get_submodule(sm.spec.final_norm), sm.model.get_submodule(sm.spec.lm_head)
    sm.source.load(norm, sm.spec.final_norm, torch.float32, sm.device)
    state = {}
    for key in head.state_dict():
        name = f"{sm.spec.lm_head}.{key}"
        state[key] = sm.source.read(name if name in sm.source.files else f"{embed_name}.{key}", torch.float32,
                                    sm.device)
    head.load_state_dict(state, strict=True, assign=True)
    try:
        yield
    finally:
        norm.to("meta")
        head.to("meta")


@torch.no_grad()
def analyze_streamed(sm: StreamedModel, config, calib: dict, weight_samples: int | None, input_ids: torch.Tensor,
                     whole: dict[str, Run], variants: bool, offload_dir: Path | None = None):
    """One streamed pass of ``flexq analyze``. ``whole``: label -> a run over the whole model, whose mean
    calibration NLL is returned; the first is the base (all A8 when ``variants``). With ``variants``, one more
    run per linear l (all A8 but l at A6) from l's own decoder layer, scored against the base as
    ``analyze.measure_sensitivity`` scores it: the same float ops per run, so the same scores.
    Returns (kl, dnll, {label: NLL}); kl and dnll are None without ``variants``."""
    from .analyze import _head, _Reference, add_score, sample_nll

    names, runs = sm.linear_names(), list(whole.values())
    if variants:
        runs += [Run(layer_index(name, sm.spec), 8, {name: 6}) for name in names]
    n, kl, dnll, nll = len(input_ids), torch.zeros(len(names)), torch.zeros(len(names)), dict.fromkeys(whole, 0.0)
    need = (len(runs) + 1) * input_ids.numel() * sm.model.config.hidden_size * 4  # float32 hidden states
    with runs_folder(offload_dir, need) as folder, contextlib.ExitStack() as stack:
        stack.callback(lambda: [setattr(r, "states", None) for r in runs])  # frees the in-memory states
        carry_runs(sm, config, calib, weight_samples, input_ids, runs, folder)
        with loaded_head(sm):
            for s in ui.track(range(n), "scoring samples"):
                ids = input_ids[s].to(sm.device)
                logits = {label: _head(sm.model, sm.spec, r.states.get(s)) for label, r in whole.items()}
                for label, value in logits.items():
                    nll[label] += sample_nll(value, ids)
                if variants:
                    base = _Reference(next(iter(logits.values())), ids[1:])
                    for j, r in enumerate(runs[len(whole):]):
                        add_score(kl, dnll, j, base, _head(sm.model, sm.spec, r.states.get(s)), n)
    return (kl, dnll) if variants else (None, None), {label: v / n for label, v in nll.items()}


# --- writing the quantized directory ------------------------------------------------------------------------

def _stored_types() -> dict[str, torch.dtype]:
    """safetensors dtype name ("BF16") -> torch dtype: safetensors' own table."""
    from safetensors.torch import _TYPES

    return _TYPES


def _dtype_names() -> dict[torch.dtype, str]:
    return {dtype: name for name, dtype in _stored_types().items()}


class ShardWriter:
    """The safetensors shards of a quantized directory, written tensor by tensor in any order.

    ``plan``: (file name, {tensor name: meta tensor}) per shard, in the order ``quantize.save_quantized``
    would write them. Each file is created at its final size with every tensor's place fixed (contiguous, in
    plan order); ``finish`` writes each header last, with the manifest and the digest of that shard's bytes,
    padded with spaces (as safetensors allows) into the room reserved for it.
    """

    def __init__(self, folder: Path, plan: list[tuple[str, dict[str, torch.Tensor]]]):
        names = _dtype_names()
        self.folder, self.files, self.places, self.written = folder, {}, {}, set()
        for file, shard in plan:
            header, offset = {}, 0
            for key, t in shard.items():
                nbytes = t.numel() * t.element_size()
                header[key] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
                self.places[key] = (file, offset, t.dtype, tuple(t.shape), nbytes)
                offset += nbytes
            room = -(-(len(json.dumps(header)) + HEADER_RESERVE) // 8) * 8
            self.files[file] = (folder / file, header, room)
            with open(folder / file, "wb") as fh:
                fh.truncate(8 + room + offset)

    def write(self, key: str, t: torch.Tensor) -> None:
        file, offset, dtype, shape, _ = self.places[key]
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise ValueError(f"{key}: planned {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
        path, _, room = self.files[file]
        with open(path, "r+b") as fh:
            fh.seek(8 + room + offset)
            if t.numel():
                fh.write(memoryview(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()))
        self.written.add(key)

    def pending(self) -> list[str]:
        return [k for k in self.places if k not in self.written]

    def finish(self, manifest: Manifest) -> None:
        """Write every header (the manifest with that shard's digest), and the index for several shards."""
        if self.pending():
            raise RuntimeError(f"tensors never written: {self.pending()[:3]}")
        for file, (path, header, room) in self.files.items():
            manifest.data_digest = tensor_digest(_ShardTensors(path, header, room))
            text = json.dumps({"__metadata__": {"flexq": manifest.to_json()}, **header}).encode()
            if len(text) > room:
                raise RuntimeError(f"{file}: the header needs {len(text)} bytes, {room} were reserved")
            with open(path, "r+b") as fh:
                fh.write(room.to_bytes(8, "little") + text.ljust(room, b" "))
        if len(self.files) > 1:
            from .quantize import write_index

            write_index(self.folder, {k: place[0] for k, place in self.places.items()},
                        sum(place[-1] for place in self.places.values()))


class _ShardTensors(Mapping):
    """The tensors of a shard being written, read back one at a time (for the digest), without a header."""

    def __init__(self, path: Path, header: dict, room: int):
        self.path, self.header, self.room, self.types = path, header, room, _stored_types()

    def __getitem__(self, key: str) -> torch.Tensor:
        entry = self.header[key]
        start, end = entry["data_offsets"]
        dtype = self.types[entry["dtype"]]
        if end == start:
            return torch.empty(entry["shape"], dtype=dtype)
        with open(self.path, "rb") as fh:
            fh.seek(8 + self.room + start)
            data = bytearray(fh.read(end - start))
        return torch.frombuffer(data, dtype=dtype).reshape(entry["shape"])

    def __iter__(self):
        return iter(self.header)

    def __len__(self) -> int:
        return len(self.header)
