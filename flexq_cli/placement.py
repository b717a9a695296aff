"""Where a model's layers live: one device, or a device map over the GPUs of one host (and host memory).

``--device-map`` syntax (``parse_device_map``):

* ``auto``: accelerate's ``infer_auto_device_map`` over the free memory of every visible GPU (balanced over
  several, as transformers' ``device_map="auto"``), then host memory; decoder layers are never split.
* ``DEV[:N],DEV[:N],...``: the next N decoder layers on DEV, in order; the last entry may leave out N (all the
  remaining layers). DEV is ``cpu`` or ``cuda:I``. ``cuda:0:40,cpu`` puts layers 0-39 on cuda:0, the rest on
  ``cpu``; ``cuda:0:40,cuda:1`` splits over two GPUs. The embeddings go with the first entry, the final norm
  and ``lm_head`` with the last (a tied ``lm_head`` stays with the embeddings).

``cpu`` means what it means to accelerate: while a GPU is in the map, a layer on ``cpu`` is *offloaded*, its
weights (QuantLinear's packed buffers included) kept in host memory and copied to the main GPU (the first GPU
of the map) for each forward, where the kernels run. With only ``cpu`` in the map, the layers run on the CPU.
Layers on a GPU run there: the kernels take the device from their input (btc.py, int8_kernel.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .arch import DecoderSpec, decoder_layers
from .errors import FlexQError

SYNTAX_HINT = "use auto, or DEV[:LAYERS],... with DEV cpu or cuda:I (e.g. cuda:0:40,cpu or cuda:0:40,cuda:1)"
GPU_HEADROOM = 0.9  # auto: fraction of each GPU's free memory given to weights (the rest: KV cache, activations)


@dataclass(frozen=True)
class DeviceMap:
    """A parsed ``--device-map``: ``auto``, or ((device, layer count or None for the rest), ...)."""

    auto: bool = False
    entries: tuple[tuple[str, int | None], ...] = ()

    def __str__(self) -> str:
        return "auto" if self.auto else ",".join(d if n is None else f"{d}:{n}" for d, n in self.entries)

    @property
    def uses_cuda(self) -> bool:
        return self.auto or any(d.startswith("cuda") for d, _ in self.entries)


def parse_device_map(text: str | None) -> DeviceMap | None:
    """``--device-map`` text -> DeviceMap (None when not given); FlexQError on bad syntax."""
    if text is None or text == "":
        return None
    if text.strip() == "auto":
        return DeviceMap(auto=True)
    entries = tuple(_parse_entry(e.strip(), text) for e in text.split(","))
    if any(n is None for _, n in entries[:-1]):
        raise FlexQError(f"--device-map '{text}': only the last entry may leave out its layer count", SYNTAX_HINT)
    return DeviceMap(entries=entries)


def _parse_entry(entry: str, text: str) -> tuple[str, int | None]:
    parts = entry.split(":")
    n_device = 1 if parts[0] == "cpu" else 2 if parts[0] == "cuda" else 0
    ok = n_device and len(parts) in (n_device, n_device + 1) and all(p.isdigit() for p in parts[1:])
    if not ok:
        raise FlexQError(f"--device-map '{text}': cannot read '{entry}'", SYNTAX_HINT)
    count = int(parts[n_device]) if len(parts) > n_device else None
    if count == 0:
        raise FlexQError(f"--device-map '{text}': '{entry}' places 0 layers", "give each entry 1 or more layers")
    return ":".join(parts[:n_device]), count


def check_cuda_devices(devices) -> None:
    """FlexQError unless every ``cuda:I`` in ``devices`` is a visible GPU."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for d in {str(d) for d in devices if str(d).startswith("cuda")}:
        if int(d.split(":")[1]) >= count:
            raise FlexQError(f"--device-map names {d}, but {count} CUDA GPU(s) are visible",
                             "name visible GPUs only (nvidia-smi), or use cpu")


def layer_devices(dm: DeviceMap, n_layers: int) -> list[str]:
    """The device of each decoder layer under an explicit map; FlexQError when the counts do not fit."""
    out = []
    for device, count in dm.entries:
        out += [device] * (n_layers - len(out) if count is None else count)
    if len(out) != n_layers:
        raise FlexQError(f"--device-map {dm} places {len(out)} decoder layers, and the model has {n_layers}",
                         "make the counts add up, or leave out the last entry's count (the rest)")
    return out


def resolve(model, spec: DecoderSpec, dm: DeviceMap, max_memory: dict | None = None) -> dict[str, str]:
    """Module name -> device ('cpu', 'cuda:I') for ``model`` (real or on the meta device) under ``dm``.
    ``max_memory`` (auto only; accelerate's form, e.g. {0: bytes, 'cpu': bytes}) replaces the measured one."""
    if dm.auto:
        return auto_map(model, spec, max_memory)
    devices = layer_devices(dm, len(decoder_layers(model, spec)))
    check_cuda_devices(devices)
    return explicit_map(model, spec, devices)


def explicit_map(model, spec: DecoderSpec, devices: list[str]) -> dict[str, str]:
    """Decoder layer i on devices[i]; the final norm and an untied lm_head on the last layer's device, every
    other module (embeddings, rotary) on the first's."""
    first, last = devices[0], devices[-1]
    tied = getattr(model.config, "tie_word_embeddings", False)
    ends = {spec.final_norm: last, **({} if tied else {spec.lm_head: last})}
    out = {name: ends.get(name, first) for name in _outer_modules(model, spec.layers)}
    out.update({f"{spec.layers}.{i}": d for i, d in enumerate(devices)})
    return out


def _outer_modules(model, layers_path: str) -> list[str]:
    """The modules beside the decoder layer list, on the path from the root to it (``model.embed_tokens``,
    ``model.norm``, ``model.rotary_emb``, ``lm_head`` for LLaMA)."""
    names, prefix = [], ""
    for part in layers_path.split("."):
        parent = model.get_submodule(prefix.rstrip("."))
        names += [prefix + child for child, _ in parent.named_children() if child != part]
        prefix += part + "."
    return names


def auto_map(model, spec: DecoderSpec, max_memory: dict | None = None) -> dict[str, str]:
    """accelerate's device map over the visible GPUs (balanced) and host memory, decoder layers unsplit."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    if max_memory is None:
        if not torch.cuda.is_available():
            raise FlexQError("--device-map auto spreads a model over CUDA GPUs, and none is visible",
                             "use --device cpu, or an explicit --device-map")
        max_memory = available_memory()
    no_split = [type(decoder_layers(model, spec)[0]).__name__]
    gpus = [k for k in max_memory if isinstance(k, int)]
    if len(gpus) > 1:
        max_memory = get_balanced_memory(model, max_memory, no_split_module_classes=no_split)
    raw = infer_auto_device_map(model, max_memory, no_split_module_classes=no_split, offload_buffers=True)
    out = {name: f"cuda:{d}" if isinstance(d, int) else str(d) for name, d in raw.items()}
    if "disk" in out.values():
        raise FlexQError("--device-map auto: the model does not fit the GPUs and host memory together",
                         "use more GPUs or a machine with more memory")
    return out


def available_memory() -> dict:
    """accelerate max_memory: GPU_HEADROOM of each visible GPU's free memory, and the host's available RAM."""
    import psutil

    torch.cuda.empty_cache()
    gpus = {i: int(torch.cuda.mem_get_info(i)[0] * GPU_HEADROOM) for i in range(torch.cuda.device_count())}
    return {**gpus, "cpu": int(psutil.virtual_memory().available * GPU_HEADROOM)}


def single_device(device_map: dict[str, str]) -> str | None:
    """The one device of a map that uses one, else None."""
    devices = set(device_map.values())
    return next(iter(devices)) if len(devices) == 1 else None


def storage_device(device_map: dict[str, str], name: str) -> str:
    """The device module ``name``'s tensors are kept on: the map's entry for it or for its closest parent."""
    while name not in device_map:
        if not name:
            raise KeyError(f"the device map covers no parent of {name}")
        name = name.rpartition(".")[0]
    return device_map[name]


def dispatch(model, device_map: dict[str, str], hooks: bool | None = None):
    """Place ``model`` by ``device_map``: a plain ``.to`` when the map names one device (and ``hooks`` is not
    True), else accelerate hooks that move each module's inputs to its device (``cpu`` layers offloaded, their
    buffers too: QuantLinear's weights are buffers)."""
    device = single_device(device_map)
    if device is not None and not hooks:
        return model.to(device)
    from accelerate import dispatch_model

    main = next((d for d in device_map.values() if d.startswith("cuda")), "cpu")  # the embeddings' GPU, if any
    return dispatch_model(model, device_map, main_device=main, offload_buffers=True, force_hooks=True)


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: its accelerate hook's execution device, else the device of its tensors."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or [hook]:
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers())
    return tensor.device


def input_device(model) -> torch.device:
    """The device the token ids go to: the input embedding's."""
    return execution_device(model.get_input_embeddings())


def spread_over(model) -> list[str] | None:
    """The devices of a model dispatched over more than one (sorted), else None."""
    device_map = getattr(model, "hf_device_map", None) or {}
    devices = sorted({str(d) for d in device_map.values()})
    return devices if len(devices) > 1 else None


def cuda_indices(model) -> list[int]:
    """The GPUs ``model`` computes on (the main GPU of an offloading map included)."""
    device_map = getattr(model, "hf_device_map", None) or {}
    devices = {str(d) for d in device_map.values()} | {str(input_device(model))}
    return sorted({int(d.split(":")[1]) if ":" in d else torch.cuda.current_device()
                   for d in devices if d.startswith("cuda")})


def synchronize(model) -> None:
    """Wait for every GPU the model computes on."""
    for i in cuda_indices(model):
        torch.cuda.synchronize(i)
