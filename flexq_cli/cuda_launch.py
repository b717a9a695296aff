"""CuPy plumbing shared by the CUDA kernels (btc.py, int8_kernel.py): run-time compile, launch, argument checks.

Sources come from ``kernels/`` (resources.kernel_source) and are compiled by NVRTC for the device's own SASS,
cached per (device, file, options). Launches go on PyTorch's current stream, with numpy int32 / uint64 scalars
(CuPy checks nothing) and tensors by ``data_ptr``, so they work under CUDA graph capture. CuPy is imported inside
the functions that need it; without it they raise :class:`KernelUnavailable`.
"""

from __future__ import annotations

import functools
import struct
import threading

import torch

from .errors import BackendUnavailable
from .resources import kernel_source

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)  # what every kernel takes as activations and writes out
INSTALL_HINT = "pip install 'flexq[cuda]' (cupy-cuda12x) or 'flexq[cuda13]' (cupy-cuda13x)"


class KernelUnavailable(BackendUnavailable, RuntimeError):
    """CuPy or a suitable GPU is missing: the CUDA kernels cannot run here."""


def cupy_module():
    try:
        import cupy
    except ImportError as e:
        raise KernelUnavailable(f"the CUDA kernels need CuPy, which is not installed ({e})", INSTALL_HINT) from e
    return cupy


def available() -> tuple[bool, str]:
    """(True, device description) when the kernels can run on the current CUDA device, else (False, why). Every
    quantized linear and norm asks on every call: the answer is computed once per device."""
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to PyTorch"
    return _available_on(torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _available_on(device: int) -> tuple[bool, str]:
    try:
        cupy_module()
    except KernelUnavailable as e:
        return False, f"{e.message}; {e.hint}"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return False, f"compute capability {major}.{minor}: the b1 m16n8k256 MMA needs sm_80 or newer"
    return True, f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"


_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def module(device: int, filename: str, options: tuple[str, ...]):
    """The compiled RawModule for (device, file, options), built by NVRTC for the device's own SASS (sm_<cc>,
    cubin), so Hopper runs native code, not JIT-ed PTX. Options that name an -arch themselves (the INT8 kernel's
    wgmma build: sm_90a) keep theirs. CuPy also keeps its on-disk cache keyed by source and options."""
    cupy = cupy_module()
    major, minor = torch.cuda.get_device_capability(device)
    # named explicitly: native SASS for this device. CuPy appends its own -arch=sm_<cc> after ours whatever we pass;
    # NVRTC 13.0 builds for sm_90a with both -arch=sm_90a and -arch=sm_90 given (checked on the H100).
    arch = () if any(o.startswith("-arch=") for o in options) else (f"-arch=sm_{major}{minor}",)
    with _lock, cupy.cuda.Device(device):
        mod = cupy.RawModule(code=kernel_source(filename), options=("-std=c++17", *arch, *options))
        mod.compile()
    return mod


def compiled_arch() -> str:
    """The -arch option CuPy's NVRTC path uses on the current device (e.g. '-arch=sm_90'), for reports."""
    from cupy.cuda import compiler

    get = getattr(compiler, "_get_arch_for_options_for_nvrtc", None)
    return get()[0] if get else f"sm_{compiler._get_arch()}"


@functools.lru_cache(maxsize=None)
def _fetch(device: int, filename: str, options: tuple[str, ...], name: str):
    with cupy_module().cuda.Device(device):
        return module(device, filename, options).get_function(name)


_smem_allowed: dict[tuple, int] = {}  # (device, file, options, name) -> the dynamic shared memory asked for so far


def function(device: int, filename: str, options: tuple[str, ...], name: str, smem: int):
    """The kernel ``name`` for ``device``, allowed ``smem`` bytes of dynamic shared memory. CuPy loads a module's
    cubin into the CURRENT device's context when the first function is fetched, so fetching (and setting
    attributes) happens with ``device`` current: fetched under another device, a kernel for GPU 1 lived in GPU 0's
    context and its launch failed (CUresult 1). The allowance is an attribute of the one driver function behind
    every fetch, so it only grows: cached per smem, a smaller request once lowered it under a larger one's cached
    handle, whose launch then failed (CUresult 1)."""
    fn = _fetch(device, filename, options, name)
    key = (device, filename, options, name)
    if smem > 48 * 1024 and smem > _smem_allowed.get(key, 0):  # more than 48 KB must be asked for
        with cupy_module().cuda.Device(device):
            fn.max_dynamic_shared_size_bytes = smem
        _smem_allowed[key] = smem
    return fn


@functools.lru_cache(maxsize=None)
def sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def check_tensor(name: str, t, device, dtypes) -> None:
    """ValueError unless ``t`` is a contiguous, 16-byte aligned CUDA tensor of one of ``dtypes`` on ``device``."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda" or (device is not None and t.device != device):
        raise ValueError(f"{name} must be on {device or 'a CUDA device'}, got {t.device}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} with shape {tuple(t.shape)} must be contiguous")
    if t.data_ptr() % 16:
        raise ValueError(f"{name} must be 16-byte aligned (data_ptr {t.data_ptr():#x})")


def ptr(t):
    import numpy as np

    return np.uint64(0 if t is None else t.data_ptr())


# Programmatic dependent launch (sm_90+): the kernels are launched with the programmatic-stream-serialization
# attribute, so each may be scheduled while the kernel before it in the stream is finishing; in the .cu,
# pdl_wait() holds back everything but the GEMM's read-only weight prefetch until that kernel has completed.
# It hides the GEMM's launch and pipeline fill behind the pack kernel. CuPy has no launch with attributes, so
# cuLaunchKernelEx is called through ctypes. Set False to launch plainly (the kernels' waits are then no-ops).
PDL = True
_CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6


@functools.lru_cache(maxsize=None)
def _driver_launch_ex():
    """(cuLaunchKernelEx, CUlaunchAttribute, CUlaunchConfig) through ctypes, or None where the driver lacks it."""
    import ctypes

    try:
        fn = ctypes.CDLL("libcuda.so.1").cuLaunchKernelEx
    except (OSError, AttributeError):
        return None

    class Attr(ctypes.Structure):  # CUlaunchAttribute: id, padding to 8, a 64-byte value union
        _fields_ = [("id", ctypes.c_uint), ("pad", ctypes.c_uint), ("value", ctypes.c_uint64 * 8)]

    class Config(ctypes.Structure):  # CUlaunchConfig
        _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("smem", ctypes.c_uint),
                    ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(Attr)), ("num_attrs", ctypes.c_uint)]

    fn.argtypes = [ctypes.POINTER(Config), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn, Attr, Config


MAX_ARGS = 32  # kernel arguments per launch at most (the launch state's slots)
_SLOT_CODES = {"uint64": "Q", "int32": "i4x", "float32": "f4x"}  # struct codes: one 8-byte slot per argument


@functools.lru_cache(maxsize=None)
def _packer(types: tuple[type, ...]) -> struct.Struct:
    """The struct that writes arguments of these numpy scalar types into the launch state's 8-byte slots
    (little-endian: an int32 or float32 in a slot's low 4 bytes, where its kernel parameter pointer points)."""
    import numpy as np

    codes = [_SLOT_CODES.get(np.dtype(t).name) if issubclass(t, np.generic) else None for t in types]
    if None in codes or len(codes) > MAX_ARGS:
        raise TypeError(f"kernel arguments must be at most {MAX_ARGS} numpy uint64, int32 or float32 scalars, got "
                        f"{[t.__name__ for t in types]}")
    return struct.Struct("<" + "".join(codes))


class _LaunchState(threading.local):
    """Per thread, built once: the argument slots, the array of pointers to them (cuLaunchKernelEx's kernelParams;
    the driver copies the values at the launch, so the slots are free again when it returns) and the launch config
    with its PDL attribute. Building these per launch cost ~19 us of Python, four fifths of the launch (H100 host,
    2026-11-24)."""

    def __init__(self):
        import ctypes

        _, attr_type, config_type = _driver_launch_ex()
        self.slots = (ctypes.c_uint64 * MAX_ARGS)()
        base = ctypes.addressof(self.slots)
        self.params = (ctypes.c_void_p * MAX_ARGS)(*[base + 8 * i for i in range(MAX_ARGS)])
        self.attr = attr_type(id=_CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)
        self.attr.value[0] = 1  # programmaticStreamSerializationAllowed
        self.config = config_type(attrs=ctypes.pointer(self.attr), num_attrs=1)
        self.config_ref = ctypes.byref(self.config)


_launch_state: _LaunchState | None = None


def _use_pdl(device: int) -> bool:
    """Every launch asks (``PDL`` is a switch for A/Bs and tests); what the device can do is asked once."""
    return PDL and _pdl_capable(device)


@functools.lru_cache(maxsize=None)
def _pdl_capable(device: int) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9 and _driver_launch_ex() is not None


def _launch_pdl(fn, grid, block, args, smem, stream: int) -> None:
    global _launch_state
    if _launch_state is None:
        _launch_state = _LaunchState()
    state = _launch_state
    _packer(tuple(map(type, args))).pack_into(state.slots, 0, *args)
    cfg = state.config
    cfg.grid[0], cfg.grid[1], cfg.grid[2] = grid
    cfg.block[0], cfg.block[1], cfg.block[2] = block
    cfg.smem, cfg.stream = smem, stream
    handle = getattr(fn, "kernel", fn).ptr  # the CUfunction behind CuPy's RawKernel
    rc = _driver_launch_ex()[0](state.config_ref, handle, state.params, None)
    if rc != 0:
        raise RuntimeError(f"cuLaunchKernelEx failed with CUresult {rc}")


def launch(fn, grid, block, args, smem, device, pdl: bool = True):
    """Launch a CuPy kernel on PyTorch's current stream of ``device`` (with PDL where available, unless ``pdl`` is
    False: then the kernel starts only once the kernel before it has completed)."""
    import numpy as np

    cupy = cupy_module()
    with cupy.cuda.Device(device):
        if pdl and _use_pdl(device):
            _launch_pdl(fn, grid, block, args, smem, _current_raw_stream(device))
            return
        with _cupy_stream(cupy, torch.cuda.current_stream(device), device):
            fn(grid, block, args, shared_mem=np.int32(smem))


def _current_raw_stream(device: int) -> int:
    """The handle of PyTorch's current stream on ``device``: torch's own raw-stream call where it has it (the one its
    compiler's generated code uses), without the Stream object current_stream(device) builds (3.6 us a call)."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw(device) if raw is not None else torch.cuda.current_stream(device).cuda_stream


def _cupy_stream(cupy, stream: torch.cuda.Stream, device: int):
    """PyTorch's ``stream`` as a CuPy stream: through the CUDA stream protocol where CuPy has it (14 and later, which
    deprecate ExternalStream), else ExternalStream."""
    if hasattr(cupy.cuda.Stream, "from_external"):
        return cupy.cuda.Stream.from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, device)

