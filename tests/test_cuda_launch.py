"""The launch path's argument packing (CPU): cuLaunchKernelEx reads each kernel parameter through a pointer to its own
8-byte slot, so every scalar must land in its slot's low bytes, little-endian, whatever its neighbours' types."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from flexq_cli import cuda_launch


def test_arguments_land_in_their_own_slots():
    args = (np.uint64(0xDEADBEEF00000001), np.int32(-7), np.float32(1.5), np.uint64(42), np.int32(2**31 - 1))
    slots = (ctypes.c_uint64 * cuda_launch.MAX_ARGS)(*([0xFFFFFFFFFFFFFFFF] * cuda_launch.MAX_ARGS))
    cuda_launch._packer(tuple(map(type, args))).pack_into(slots, 0, *args)
    raw = np.frombuffer(slots, dtype=np.uint64)
    assert raw[0] == args[0] and raw[3] == args[3]
    assert np.frombuffer(slots, dtype=np.int32)[2] == -7 and raw[1] >> np.uint64(32) == 0  # upper half zeroed
    assert np.frombuffer(slots, dtype=np.float32)[4] == 1.5
    assert np.frombuffer(slots, dtype=np.int32)[8] == 2**31 - 1
    assert raw[5] == 0xFFFFFFFFFFFFFFFF  # slots past the arguments untouched


@pytest.mark.parametrize("bad", [(np.uint64(1), 3), (np.int64(1),), (np.float64(1.0),),
                                 (np.int32(0),) * (cuda_launch.MAX_ARGS + 1)])
def test_other_arguments_are_refused(bad):
    with pytest.raises(TypeError, match="numpy uint64, int32 or float32 scalars"):
        cuda_launch._packer(tuple(map(type, bad)))
