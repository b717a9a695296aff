"""The quantization config: one frozen dataclass, the single source of defaults. YAML presets map onto it 1:1.

Activation bits per layer form an ordered mapping, as in torchao's per-module configs: each override is
``(pattern, bits)`` where ``pattern`` is a full module name (``model.layers.3.mlp.down_proj``) or ``re:REGEX``
matched against the full name; the first match wins, else ``act_bits``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FlexQError
from .primitives import check_group_size

ACT_BITS = (6, 8)
WEIGHT_CLIP = ("none", "mse", "output")


@dataclass(frozen=True)
class QuantConfig:
    weight_bits: int = 6
    weight_group_size: int = 128  # -1: one scale per output channel
    act_group_size: int = 128  # -1: one scale per token
    act_bits: int = 6  # default activation bits of a decoder linear
    act_bits_overrides: tuple[tuple[str, int], ...] = field(default_factory=tuple)
    # Accuracy algorithms (docs/accuracy.md). They change which codes and scales are written, never the format.
    weight_clip: str = "none"  # per-group scale search: none (absmax), mse (weight error), output (layer output)
    gptq: bool = False  # GPTQ error compensation with the calibration Hessian
    gptq_damp: float = 0.01  # damping, as a fraction of the Hessian's mean diagonal
    gptq_act_order: bool = False  # columns by decreasing Hessian diagonal (group scales then fixed up front)
    smooth_alpha: float | None = None  # SmoothQuant migration strength; None: no smoothing
    smooth_search: bool = False  # choose the smoothing per linear group by measured output error (AWQ-like)
    rotate: bool = False  # Hadamard rotation of the residual stream and each head's values (algorithms/rotate.py)
    # Linears (full names or re:REGEX, as in act_bits_overrides) whose input is rotated at run time, block by
    # 128-wide block, by a Hadamard matrix folded into their weight (algorithms/rotate.py): down_proj in w6a6-best.
    online_rotate: tuple[str, ...] = field(default_factory=tuple)
    tune_norms: int = 0  # epochs of end-to-end RMSNorm tuning against the float model (algorithms/tune.py)
    tune_samples: int = 0  # calibration samples the tuning uses (the first ones); 0: all that the weights use

    def __post_init__(self):
        if self.weight_bits != 6:
            raise ValueError(f"weight_bits must be 6 (the packed format holds 6 bit-planes), got {self.weight_bits}")
        for name in ("weight_group_size", "act_group_size"):
            try:
                check_group_size(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        overrides = tuple((str(p), int(b)) for p, b in dict(self.act_bits_overrides).items())
        object.__setattr__(self, "act_bits_overrides", overrides)
        for pattern, bits in ((None, self.act_bits), *overrides):
            if bits not in ACT_BITS:
                raise ValueError(f"activation bits must be one of {ACT_BITS}, got {bits} for {pattern or 'default'}")
            if pattern and pattern.startswith("re:"):
                re.compile(pattern[3:])
        if self.weight_clip not in WEIGHT_CLIP:
            raise ValueError(f"weight_clip must be one of {WEIGHT_CLIP}, got {self.weight_clip!r}")
        if not isinstance(self.gptq, bool) or not isinstance(self.gptq_act_order, bool):
            raise ValueError("gptq and gptq_act_order must be true or false")
        if not 0.0 < self.gptq_damp < 1.0:
            raise ValueError(f"gptq_damp must be in (0, 1), got {self.gptq_damp}")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise ValueError(f"smooth_alpha must be null or in [0, 1], got {self.smooth_alpha}")
        if not isinstance(self.smooth_search, bool):
            raise ValueError("smooth_search must be true or false")
        if not isinstance(self.rotate, bool):
            raise ValueError("rotate must be true or false")
        if self.rotate and self.smooth_alpha is not None:
            raise ValueError("smooth_alpha reads input maxima measured on the unrotated model: with rotate, use "
                             "smooth_search (measured on the rotated layers) or no smoothing")
        for name in ("tune_norms", "tune_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
                raise ValueError(f"{name} must be an integer in 0..100, got {value!r}")
        if self.online_rotate is None:
            object.__setattr__(self, "online_rotate", ())
        if isinstance(self.online_rotate, str) or not all(isinstance(p, str) for p in self.online_rotate):
            raise ValueError(f"online_rotate must be a list of linear names or re:REGEX patterns, "
                             f"got {self.online_rotate!r}")
        object.__setattr__(self, "online_rotate", tuple(self.online_rotate))
        for pattern in self.online_rotate:
            try:
                re.compile(pattern[3:] if pattern.startswith("re:") else "")
            except re.error as exc:
                raise ValueError(f"online_rotate: bad pattern {pattern!r} ({exc})") from None
        if self.online_rotate and self.smooth_search:
            raise ValueError("smooth_search would fold its factors for the rotated inputs of online_rotate into the "
                             "unrotated producer: drop smooth_search (smooth_alpha folds before the rotation) "
                             "or online_rotate")
        if self.smooth_search and self.smooth_alpha is not None:
            raise ValueError("smooth_search chooses the smoothing itself: drop smooth_alpha, "
                             "or set smooth_search false")

    def activation_users(self) -> list[str]:
        """The options that choose the weights with calibration activations (layer by layer), as YAML keys."""
        return [key for key, on in (("gptq", self.gptq), ("weight_clip: output", self.weight_clip == "output"),
                                    ("smooth_search", self.smooth_search)) if on]

    def calibration_users(self) -> list[str]:
        """The options that read calibration data (statistics or activations), as YAML keys."""
        return self.activation_users() + [key for key, on in (("smooth_alpha", self.smooth_alpha is not None),
                                                              ("tune_norms", self.tune_norms > 0)) if on]

    @property
    def needs_calibration(self) -> bool:
        """Whether quantizing with this config reads calibration data (statistics or activations)."""
        return bool(self.calibration_users())

    @property
    def needs_activations(self) -> bool:
        """Whether the weights are chosen with calibration activations (layer by layer), not from weights alone."""
        return bool(self.activation_users())

    def check_streamable(self, stream: bool) -> None:
        """Refuse, in one line, the options that need the whole model at once when ``stream`` is asked for."""
        whole_model = (("rotate", self.rotate, "the rotation rewrites the embeddings and the head along with every "
                        "layer"),
                       ("tune_norms", self.tune_norms, "it trains through the whole model at once"),
                       ("online_rotate", self.online_rotate, "the streamed pass does not fold the rotation yet"))
        for key, on, why in whole_model:
            if stream and on:
                raise FlexQError(f"{key} is not available with --stream ({why})",
                                 f"drop --stream, or use a preset without {key} (flexq-stream, w6a8, w6a6)")

    def act_bits_for(self, name: str) -> int:
        """Activation bits of the linear called ``name`` (its full module name)."""
        for pattern, bits in self.act_bits_overrides:
            if _matches(pattern, name):
                return bits
        return self.act_bits

    def online_rotated(self, name: str) -> bool:
        """Whether the linear called ``name`` (its full module name) gets the online input rotation."""
        return any(_matches(pattern, name) for pattern in self.online_rotate)

    def with_plan(self, act_bits: dict[str, int], default: int) -> "QuantConfig":
        """This config with a plan's explicit per-layer bits (and default) replacing its own overrides."""
        return dataclasses.replace(self, act_bits=default, act_bits_overrides=tuple(act_bits.items()))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["act_bits_overrides"] = dict(self.act_bits_overrides)
        d["online_rotate"] = list(self.online_rotate)
        return d

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config") -> "QuantConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise FlexQError(f"{where}: unknown key(s) {', '.join(unknown)}", f"known keys: {', '.join(sorted(known))}")
        raw = dict(raw)
        raw["act_bits_overrides"] = tuple((raw.get("act_bits_overrides") or {}).items())
        try:
            return cls(**raw)
        except (ValueError, TypeError, re.error) as exc:
            raise FlexQError(f"{where}: {exc}", "fix the config") from exc


def _matches(pattern: str, name: str) -> bool:
    return pattern == name or (pattern.startswith("re:") and re.fullmatch(pattern[3:], name) is not None)


def preset_names() -> list[str]:
    from .resources import configs_dir

    return sorted(p.stem for p in (configs_dir() / "presets").glob("*.yaml"))


def load_preset(name_or_path: str) -> QuantConfig:
    """A preset by name (``w6a6``, ``w6a8``, ``flexq``, ... : ``preset_names()``) or a YAML file path."""
    import yaml

    from .resources import configs_dir

    path = Path(name_or_path)
    if not path.suffix:
        path = configs_dir() / "presets" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FlexQError(f"unknown preset '{name_or_path}'", f"use one of {', '.join(preset_names())} or a YAML file")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise FlexQError(f"{path}: a preset must be a YAML mapping", "see configs/presets/ for examples")
    return QuantConfig.from_dict(raw, str(path))
