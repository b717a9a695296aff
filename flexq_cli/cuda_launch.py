"""CuPy plumbing shared by the CUDA kernels (btc.py, int8_kernel.py): run-time compile, launch, argument checks.

Sources come from ``kernels/`` (resources.kernel_source) and are compiled by NVRTC for the device's own SASS,
cached per (device, file, options). Launches go on PyTorch's current stream, with numpy int32 / uint64 scalars
(CuPy checks nothing) and tensors by ``data_ptr``, so they work under CUDA graph capture. CuPy is imported inside
the functions that need it; without it they raise :class:`KernelUnavailable`.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=None)
def _scalar_types() -> dict:
    """numpy dtype of a launch scalar -> the ctypes type cuLaunchKernelEx gets it as."""
    import ctypes

    import numpy as np

    return {np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.int32): ctypes.c_int32,
            np.dtype(np.float32): ctypes.c_float}


def _use_pdl(device: int) -> bool:
    """Every launch asks (``PDL`` is a switch for A/Bs and tests); what the device can do is asked once."""
    return PDL and _pdl_capable(device)


@functools.lru_cache(maxsize=None)
def _pdl_capable(device: int) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9 and _driver_launch_ex() is not None


def _launch_pdl(fn, grid, block, args, smem, stream: int) -> None:
    import ctypes

    launch, Attr, Config = _driver_launch_ex()
    kinds = _scalar_types()
    if any(getattr(v, "dtype", None) not in kinds for v in args):
        raise TypeError(f"kernel arguments must be numpy uint64, int32 or float32 scalars, got {args}")
    vals = [kinds[v.dtype](v.item()) for v in args]
    params = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
    attr = Attr(id=_CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)
    attr.value[0] = 1  # programmaticStreamSerializationAllowed
    cfg = Config(grid=(ctypes.c_uint * 3)(*grid), block=(ctypes.c_uint * 3)(*block), smem=smem,
                 stream=stream, attrs=ctypes.pointer(attr), num_attrs=1)
    handle = getattr(fn, "kernel", fn).ptr  # the CUfunction behind CuPy's RawKernel
    rc = launch(ctypes.byref(cfg), handle, params, None)
    if rc != 0:
        raise RuntimeError(f"cuLaunchKernelEx failed with CUresult {rc}")


def launch(fn, grid, block, args, smem, device, pdl: bool = True):
    """Launch a CuPy kernel on PyTorch's current stream of ``device`` (with PDL where available, unless ``pdl`` is
    False: then the kernel starts only once the kernel before it has completed)."""
    import numpy as np

    cupy = cupy_module()
    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device):
        if pdl and _use_pdl(device):
            _launch_pdl(fn, grid, block, args, smem, stream.cuda_stream)
            return
        with _cupy_stream(cupy, stream, device):
            fn(grid, block, args, shared_mem=np.int32(smem))


def _cupy_stream(cupy, stream: torch.cuda.Stream, device: int):
    """PyTorch's ``stream`` as a CuPy stream: through the CUDA stream protocol where CuPy has it (14 and later, which
    deprecate ExternalStream), else ExternalStream."""
    if hasattr(cupy.cuda.Stream, "from_external"):
        return cupy.cuda.Stream.from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, device)

