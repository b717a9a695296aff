"""Artifacts on disk: safetensors files whose ``__metadata__["flexq"]`` holds a JSON manifest, and the atomic
output directories the stages write them into.

A manifest says what the file is (``schema``, ``stage``), what made it (``config``, package ``versions``) and
from which model (``source``: id and fingerprint). Every stage validates the manifest of its input, and a
digest of the tensor bytes catches files corrupted after they were written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import ArtifactError, FlexQError

SCHEMA_VERSION = 1
STAGES = ("calibration", "plan", "quantized")
STAGE_COMMAND = {"calibration": "flexq calibrate", "plan": "flexq analyze", "quantized": "flexq quantize"}


@dataclass
class Manifest:
    stage: str
    source: dict
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    schema: int = SCHEMA_VERSION
    versions: dict = field(default_factory=lambda: package_versions())
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    data_digest: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> "Manifest":
        try:
            raw = json.loads(text)
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ArtifactError(f"{where}: the flexq manifest is unreadable ({exc})", "re-create the artifact") from exc


def package_versions() -> dict:
    import safetensors
    import transformers

    from . import __version__

    return {"flexq": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__}


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """blake2b over names, dtypes, shapes and bytes, in name order."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def save_artifact(path: Path, tensors: dict[str, torch.Tensor], manifest: Manifest) -> None:
    from safetensors.torch import save_file

    manifest.data_digest = tensor_digest(tensors)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"flexq": manifest.to_json()})


def read_manifest(path: Path) -> Manifest:
    """The manifest of one safetensors file; a clear ArtifactError if missing, truncated or not ours."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ArtifactError(f"{path} does not exist", "check the path, or re-run the stage that writes it")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except SafetensorError as exc:
        raise ArtifactError(f"{path} is truncated or corrupted ({exc})", "re-run the stage that wrote it") from exc
    if "flexq" not in meta:
        raise ArtifactError(f"{path} is a safetensors file without a flexq manifest", "pass a flexq artifact")
    return Manifest.from_json(meta["flexq"], str(path))


def load_tensors(path: Path, manifest: Manifest, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of ``path``, checked against the manifest's digest."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device=device)
    except SafetensorError as exc:
        raise ArtifactError(f"{path} is truncated or corrupted ({exc})", "re-run the stage that wrote it") from exc
    if manifest.data_digest and tensor_digest(tensors) != manifest.data_digest:
        raise ArtifactError(f"{path} is corrupted: its tensor data does not match the digest written with it",
                            "re-run the stage that wrote it")
    return tensors


def check_manifest(manifest: Manifest, where: str, stage: str, fingerprint: str | None = None) -> None:
    """Raise unless ``manifest`` is a current-schema ``stage`` artifact (from the model ``fingerprint``)."""
    if manifest.schema != SCHEMA_VERSION:
        raise ArtifactError(f"{where} has schema version {manifest.schema}; this flexq reads {SCHEMA_VERSION}",
                            f"re-create it with this version ({STAGE_COMMAND.get(manifest.stage, 'flexq')})")
    if manifest.stage != stage:
        raise ArtifactError(f"{where} is a '{manifest.stage}' artifact, but a '{stage}' artifact is needed here",
                            f"pass the output of {STAGE_COMMAND[stage]}")
    if fingerprint is not None and manifest.source.get("fingerprint") != fingerprint:
        raise ArtifactError(f"{where} was made from model '{manifest.source.get('model')}', not this one "
                            f"(fingerprints differ)", "re-run that stage on this model")


ARTIFACT_FILES = {"calibration": "calibration.safetensors", "plan": "plan.safetensors",
                  "quantized": "model.safetensors"}


def load_artifact(path: Path, stage: str, model_fingerprint: str | None = None):
    """(manifest, tensors) of the ``stage`` artifact at ``path`` (its directory or its file), validated:
    present, intact, the right stage and schema, from the right model."""
    path = Path(path)
    file = path / ARTIFACT_FILES[stage] if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        for other, name in ARTIFACT_FILES.items():
            if (path / name).is_file() and other != stage:
                check_manifest(read_manifest(path / name), str(path), stage)  # names the stage it holds
    manifest = read_manifest(file)
    check_manifest(manifest, str(path), stage, model_fingerprint)
    return manifest, load_tensors(file, manifest)


@contextlib.contextmanager
def atomic_output_dir(out: Path, force: bool = False):
    """Yield a temporary directory beside ``out`` that becomes ``out`` only if the block succeeds.

    On any failure, Ctrl-C included, the temporary directory is removed and an existing ``out`` is untouched.
    With ``force``, an existing ``out`` is replaced only after the new one is complete.
    """
    out = Path(out)
    if out.exists() and not force:
        raise FlexQError(f"output {out} already exists", "pass --force to replace it, or choose another --out")
    if out.exists() and not out.is_dir():
        raise FlexQError(f"output {out} exists and is not a directory", "choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
