"""Where the CUDA sources and YAML configs live, for a source checkout and for an installed wheel alike.

The wheel carries the top-level ``kernels/`` and ``configs/`` folders as ``flexq_cli/_data/kernels`` and
``flexq_cli/_data/configs`` (pyproject.toml, force-include). A source checkout or an editable install finds
them beside the package. ``FLEXQ_KERNELS_DIR`` / ``FLEXQ_CONFIGS_DIR`` override both.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    override = os.environ.get(f"FLEXQ_{name.upper()}_DIR")
    candidates = [Path(override)] if override else [_PACKAGE / "_data" / name, _PACKAGE.parent / name]
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(f"flexq's {name}/ folder was not found (looked in {', '.join(map(str, candidates))})")


def kernels_dir() -> Path:
    return _data_dir("kernels")


def configs_dir() -> Path:
    return _data_dir("configs")


def kernel_source(filename: str) -> str:
    """The text of one CUDA source file from ``kernels/``, each ``#include "x.cuh"`` of a file in that folder
    replaced by the file's text: NVRTC compiles one string and has no include path to find them on."""
    folder = kernels_dir()
    lines = []
    for line in (folder / filename).read_text().splitlines():
        name = line.removeprefix('#include "').removesuffix('"')
        if line.startswith('#include "') and (folder / name).is_file():
            lines += [x for x in (folder / name).read_text().splitlines() if x.strip() != "#pragma once"]
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"
