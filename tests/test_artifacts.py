"""Manifests, digests and atomic output directories."""

from __future__ import annotations

import pytest
import torch

from flexq_cli.artifacts import (Manifest, atomic_output_dir, check_manifest, load_tensors, read_manifest,
                                 save_artifact)
from flexq_cli.errors import ArtifactError, FlexQError


def _write(path, stage="calibration", fingerprint="abc"):
    save_artifact(path, {"x": torch.arange(1000.0)}, Manifest(stage=stage, source={"model": "m", "fingerprint": fingerprint}))


def test_round_trip_and_checks(tmp_path):
    _write(tmp_path / "a.safetensors")
    m = read_manifest(tmp_path / "a.safetensors")
    check_manifest(m, "a", "calibration", "abc")
    assert torch.equal(load_tensors(tmp_path / "a.safetensors", m)["x"], torch.arange(1000.0))
    with pytest.raises(ArtifactError, match="'calibration' artifact, but a 'plan'"):
        check_manifest(m, "a", "plan")
    with pytest.raises(ArtifactError, match="made from model 'm', not this one"):
        check_manifest(m, "a", "calibration", "other")


def test_truncated_and_corrupted_files_are_named(tmp_path):
    path = tmp_path / "a.safetensors"
    _write(path)
    data = path.read_bytes()
    path.write_bytes(data[:-50])
    with pytest.raises(ArtifactError, match="truncated or corrupted"):
        read_manifest(path)
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ArtifactError, match="does not match the digest"):
        load_tensors(path, read_manifest(path))
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ArtifactError):
        read_manifest(path)


def test_atomic_dir_leaves_nothing_on_failure_or_interrupt(tmp_path):
    out = tmp_path / "out"
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_output_dir(out) as tmp:
                (tmp / "partial").write_text("x")
                raise exc
        assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_unless_forced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("keep")
    with pytest.raises(FlexQError, match="already exists"):
        with atomic_output_dir(out):
            pass
    with pytest.raises(RuntimeError):  # a failed forced run keeps the old output
        with atomic_output_dir(out, force=True):
            raise RuntimeError
    assert (out / "old").read_text() == "keep"
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "new").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["new"] and len(list(tmp_path.iterdir())) == 1
