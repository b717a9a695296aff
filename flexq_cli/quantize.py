"""``flexq quantize``: a self-contained quantized model directory, and loading it back.

Directory layout (the format is documented in docs/format.md):
  config.json            the source config plus ``quantization_config: {quant_method: flexq, ...}``
  tokenizer files, generation_config.json
  model.safetensors      or model-0000i-of-0000N.safetensors + model.safetensors.index.json
                         every shard carries the manifest (stage "quantized") in its metadata
Decoder linears are stored as ``<name>.qweight`` / ``<name>.scales`` (/ ``<name>.bias``) (modules.QuantLinear);
embeddings, norms and lm_head stay 16-bit.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import packing
from .analyze import load_plan
from .arch import linear_names, spec_for_config
from .artifacts import Manifest, atomic_output_dir, check_manifest, load_tensors, read_manifest, save_artifact
from .config import QuantConfig, load_preset
from .errors import ArtifactError, FlexQError
from .loading import QUANT_METHOD, fingerprint, load_fp_model, resolve_model
from .modules import QuantLinear, replace_module, set_backend

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 4 << 30


@dataclass(frozen=True)
class QuantizeResult:
    out: str
    layers: int
    a8_layers: int
    params: int  # weights of the quantized linears (unpadded)
    packed_bytes: int  # qweight bytes
    scale_bytes: int
    zero_groups: int  # weight groups that were all zero (scale 0)


def resolve_config(preset: str | None, plan: Path | None, model_fingerprint: str) -> tuple[QuantConfig, dict]:
    """The config to quantize with, and a description of where it came from (for the manifest)."""
    if plan is None:
        return load_preset(preset or "w6a8"), {"preset": preset or "w6a8"}
    manifest, _ = load_plan(plan, model_fingerprint)
    base = QuantConfig.from_dict(manifest.config["quant"], f"{plan} (quant config)")
    if preset is not None:
        chosen = load_preset(preset)
        if (chosen.weight_group_size, chosen.act_group_size) != (base.weight_group_size, base.act_group_size):
            raise FlexQError(f"--preset {preset} uses other group sizes than the plan in {plan} was measured with",
                             "drop --preset, or re-run flexq analyze with that preset")
        if _transform_keys(chosen) != _transform_keys(base):
            raise FlexQError(f"--preset {preset} transforms the model otherwise ({_transforms(chosen)}) than the "
                             f"plan in {plan} was measured on ({_transforms(base)})",
                             "re-run flexq analyze with that preset")
        base = chosen
    config = base.with_plan(manifest.extra["act_bits"], manifest.extra["default"])
    return config, {"plan": str(plan), "plan_summary": manifest.extra.get("summary", {})}


def _transform_keys(config: QuantConfig) -> tuple:
    return config.smooth_alpha, config.smooth_search, config.rotate, config.online_rotate


def _transforms(config: QuantConfig) -> str:
    if config.smooth_search:
        kind = "smooth_search"
    else:
        kind = "no smoothing" if config.smooth_alpha is None else f"alpha {config.smooth_alpha}"
    online = f", online rotation of {list(config.online_rotate)}" if config.online_rotate else ""
    return kind + (", rotated" if config.rotate else "") + online


@torch.no_grad()
def quantize_model(model, spec, config: QuantConfig, keep_dtype: torch.dtype, calib: dict | None = None,
                   calib_samples: int | None = None) -> tuple[QuantizeResult, dict]:
    """Replace every decoder linear of ``model`` by a QuantLinear, in place (after smoothing, with the weight
    algorithm of ``config``); cast the rest to ``keep_dtype``. ``calib``: calibration tensors, when the config
    needs them. Returns the result and the algorithms' summary."""
    from .algorithms.sequential import prepare_quantized

    names = linear_names(model, spec)
    params = sum(model.get_submodule(n).weight.numel() for n in names)

    def make(name, linear, codes, scales):
        return QuantLinear.from_linear(linear, config.act_bits_for(name), config, name, codes, scales)

    summary = prepare_quantized(model, spec, config, make, calib, calib_samples)
    layers = [model.get_submodule(n) for n in names]
    packed = sum(layer.qweight.numel() * 4 for layer in layers)
    scale_bytes = sum(layer.scales.numel() * 2 for layer in layers)
    zero = sum(int((layer.scales == 0).sum()) for layer in layers)
    a8 = sum(layer.act_bits == 8 for layer in layers)
    cast_unquantized(model, keep_dtype)
    return QuantizeResult("", len(names), a8, params, packed, scale_bytes, zero), summary


def load_calibration_for(calib: Path | None, config: QuantConfig, model_fp: str, samples: int | None):
    """The calibration tensors the config needs (validated against the model), or None when it needs none."""
    if not config.needs_calibration:
        return None
    if calib is None:
        raise FlexQError(f"this config ({', '.join(config.calibration_users())}) needs calibration data",
                         "pass --calib DIR (the output of flexq calibrate for this model)")
    from .calibrate import load_calibration

    _, tensors = load_calibration(calib, model_fp)
    if samples is not None and not 1 <= samples <= tensors["input_ids"].shape[0]:
        raise FlexQError(f"--calib-samples {samples} is outside 1..{tensors['input_ids'].shape[0]} "
                         f"(the samples in {calib})", "lower it, or calibrate with more samples")
    return tensors


def cast_unquantized(model, dtype: torch.dtype) -> None:
    """Cast every float parameter and buffer outside QuantLinear modules (QuantLinear's bias included)."""
    for module in model.modules():
        if isinstance(module, QuantLinear):
            if module.bias is not None:
                module.bias = module.bias.to(dtype)
            continue
        for key, p in module.named_parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
        for key, b in module.named_buffers(recurse=False):
            if b is not None and b.is_floating_point() and key in module._buffers and "inv_freq" not in key:
                module._buffers[key] = b.to(dtype)


def keep_dtype_for(config) -> torch.dtype:
    """bfloat16 when the source checkpoint is bfloat16, else float16."""
    raw = config.to_dict()
    src = raw.get("dtype") or raw.get("torch_dtype")
    return torch.bfloat16 if str(src).endswith("bfloat16") else torch.float16


def quantize(model_name: str, out: Path, *, preset: str | None = None, plan: Path | None = None,
             calib: Path | None = None, calib_samples: int | None = None, force: bool = False, device: str = "cpu",
             max_shard_bytes: int = DEFAULT_SHARD_BYTES, stream: bool = False,
             offload_dir: Path | None = None) -> QuantizeResult:
    """Quantize ``model_name`` into the directory ``out``: the whole model in memory, or with ``stream`` one
    decoder layer at a time (streaming.py; the same files, ``offload_dir`` for the calibration activations)."""
    ref = resolve_model(model_name)
    fp = fingerprint(ref)
    config, origin = resolve_config(preset, plan, fp)
    config.check_streamable(stream)
    calib_tensors = load_calibration_for(calib, config, fp, calib_samples)
    with atomic_output_dir(out, force) as tmp:
        start = time.perf_counter()

        def manifest_for(keep: torch.dtype, names: list[str], algorithms: dict) -> Manifest:
            algorithms["seconds"] = round(time.perf_counter() - start, 2)
            if calib_tensors is not None:
                algorithms["calibration"] = str(calib)
            return Manifest(stage="quantized", source={"model": ref.model_id, "fingerprint": fp},
                            config={"quant": config.to_dict()},
                            extra={"origin": origin, "keep_dtype": str(keep).removeprefix("torch."),
                                   "layers": names, "algorithms": algorithms, "qweight_layout": packing.LAYOUT})

        if stream:
            from .streaming import quantize_streamed

            result = quantize_streamed(ref, config, tmp, manifest_for, calib_tensors, calib_samples, device,
                                       max_shard_bytes, offload_dir)
        else:
            model, tokenizer, spec = load_fp_model(ref, torch.float32, device)
            keep = keep_dtype_for(model.config)
            result, algorithms = quantize_model(model, spec, config, keep, calib_tensors, calib_samples)
            manifest = manifest_for(keep, linear_names(model, spec), algorithms)
            save_quantized(tmp, model, tokenizer, manifest, config, max_shard_bytes)
    return QuantizeResult(str(out), *list(result.__dict__.values())[1:])


def save_quantized(folder: Path, model, tokenizer, manifest: Manifest, config: QuantConfig, max_shard_bytes: int):
    save_side_files(folder, model.config, model.generation_config, tokenizer, config)
    state = {k: v for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    shards = _split(state, max_shard_bytes)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = shard_file_name(i, len(shards))
        save_artifact(folder / name, shard, manifest)
        weight_map.update(dict.fromkeys(shard, name))
    if len(shards) > 1:
        write_index(folder, weight_map, sum(t.numel() * t.element_size() for t in state.values()))


def save_side_files(folder: Path, hf_config, generation_config, tokenizer, config: QuantConfig) -> None:
    """config.json (with the quantization config), generation_config.json and the tokenizer files."""
    hf_config.quantization_config = {"quant_method": QUANT_METHOD, **config.to_dict()}
    hf_config.save_pretrained(folder)
    if generation_config is not None:
        generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def shard_file_name(i: int, n: int) -> str:
    return SINGLE_FILE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def write_index(folder: Path, weight_map: dict[str, str], total_bytes: int) -> None:
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total_bytes}, "weight_map": weight_map},
                                                indent=2))


def output_plan(hf_config, config: QuantConfig, keep: torch.dtype, max_shard_bytes: int):
    """(file name, {tensor name: meta tensor}) per shard of the quantized directory, as save_quantized lays
    it out: the streamed writer fixes every tensor's place before any is quantized."""
    model = quantized_skeleton(copy.deepcopy(hf_config), config, keep)  # from_config would set its dtype
    cast_unquantized(model, keep)
    state = model.state_dict()
    if getattr(hf_config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    shards = _split(state, max_shard_bytes)
    return [(shard_file_name(i, len(shards)), shard) for i, shard in enumerate(shards)]


def quantized_skeleton(hf_config, config: QuantConfig | None, dtype: torch.dtype):
    """The model of ``hf_config`` on the meta device (buffers such as the rotary ones computed), every decoder
    linear a QuantLinear of ``config`` (None: left 16-bit)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    spec = spec_for_config(hf_config)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    for name in linear_names(model, spec) if config is not None else []:
        linear = model.get_submodule(name)
        replace_module(model, name, QuantLinear(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            act_bits=config.act_bits_for(name), weight_group_size=config.weight_group_size,
            act_group_size=config.act_group_size, device="meta", rotate_input=config.online_rotated(name)))
    return model


def _split(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards, size = [{}], 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    return shards


def _shard_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        return sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    return [folder / SINGLE_FILE]


def _to_current_layout(state: dict[str, torch.Tensor], layout: str | None, path: Path) -> None:
    """Directories written before the 16-row groups (no ``qweight_layout``) hold each row's records in turn: the
    same bytes in another order, regrouped here once (packing.group_rows)."""
    if layout == packing.LAYOUT:
        return
    if layout is not None:
        raise ArtifactError(f"{path}: qweight layout {layout!r} is unknown to this flexq (it reads {packing.LAYOUT!r})",
                            "re-create the directory with this version (flexq quantize)")
    for key in [k for k in state if k.endswith(".qweight")]:
        state[key] = packing.group_rows(state[key])


def load_quantized(path: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32, backend: str = "auto"):
    """(model, tokenizer, manifest) of a quantized directory; compute dtype ``dtype`` for unquantized layers."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(path)
    files = _shard_files(path)
    manifests = [read_manifest(f) for f in files]
    manifest = manifests[0]
    check_manifest(manifest, str(path), "quantized")
    config = QuantConfig.from_dict(manifest.config["quant"], f"{path} (quant config)")
    hf_config = AutoConfig.from_pretrained(path)
    del hf_config.quantization_config
    model = quantized_skeleton(hf_config, config, dtype)
    state = {}
    for f, m in zip(files, manifests):
        state.update(load_tensors(f, m, device=device))
    _to_current_layout(state, manifest.extra.get("qweight_layout"), path)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and hf_config.tie_word_embeddings)]
    if missing or unexpected:
        raise ArtifactError(f"{path}: tensors missing {missing[:3]} or unexpected {unexpected[:3]}",
                            "the directory is incomplete or from another model; re-run flexq quantize")
    if hf_config.tie_word_embeddings:
        model.tie_weights()
    cast_unquantized(model, dtype)
    model.to(device).eval()
    set_backend(model, backend)
    return model, AutoTokenizer.from_pretrained(path), manifest
