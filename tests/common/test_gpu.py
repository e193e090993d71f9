"""lib.common.gpu: NVML is opened for the GPU the engines use (matched by UUID, honouring CUDA_VISIBLE_DEVICES),
never NVML's index 0 by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from lib.config.device import nvml_gpus


def _torch_sees_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(bool(nvml_gpus()) and _torch_sees_cuda(), reason="a GPU is here: the GPU test covers it")
def test_without_a_gpu_the_reason_is_given():
    from lib.common.gpu import GpuError, nvml_handle
    from lib.measure.sampler import Sampler

    with pytest.raises(GpuError, match="NVML|CUDA"):
        nvml_handle()
    s = Sampler(gpu=True)  # sampled as CPU only, with the reason kept for the report
    assert s.nvml is None and s.gpu_error and ("NVML" in s.gpu_error or "CUDA" in s.gpu_error)


_PROBE = """
import json, pynvml, torch
from lib.measure.environment import collect_environment
from lib.common.gpu import cuda_uuid, nvml_handle
from lib.measure.sampler import Sampler
h = nvml_handle(0)
u = pynvml.nvmlDeviceGetUUID(h)
s = Sampler(gpu=True)
print(json.dumps({"nvml": u.decode() if isinstance(u, bytes) else u, "cuda": cuda_uuid(0),
                  "env": collect_environment()["gpu"]["uuid"], "sampler_error": s.gpu_error,
                  "sampler": (lambda v: v.decode() if isinstance(v, bytes) else v)(pynvml.nvmlDeviceGetUUID(s.nvml.h))}))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not _torch_sees_cuda(), reason="needs a CUDA GPU (torch.cuda.is_available())")
def test_nvml_follows_cuda_visible_devices():
    """Each GPU made the only visible one in turn: NVML's handle, the environment record and the sampler all
    describe that GPU (with two or more GPUs, index 0 would be wrong for all but the first).
    Run on a GPU host: python -m pytest -q -m gpu tests/common/test_gpu.py"""
    import pynvml

    pynvml.nvmlInit()
    uuids = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        u = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
        uuids.append(u.decode() if isinstance(u, bytes) else u)
    for u in reversed(uuids):  # the last first: NVML's index 0 is the wrong answer there
        proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": u, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got["sampler_error"] is None
        assert got["nvml"] == got["cuda"] == got["env"] == got["sampler"] == u, got


@pytest.mark.skipif(bool(nvml_gpus()), reason="a GPU is here: the GPU test covers it")
def test_without_a_driver_nvml_says_why():
    from lib.common.gpu import GpuError, first_gpu_handle, gpu_names, nvml

    assert gpu_names() == ()
    for fn in (nvml, first_gpu_handle):
        with pytest.raises(GpuError, match="NVML"):
            fn()
    from lib.common.gpu import power_reader

    with pytest.raises(GpuError, match="NVML"):
        power_reader(None)


@pytest.mark.gpu
@pytest.mark.skipif(not _torch_sees_cuda(), reason="needs a CUDA GPU (torch.cuda.is_available())")
def test_power_is_read_instantaneously_where_the_driver_can():
    """NVML's plain power reading is a 1 s average on Ampere and newer (a quarter-second window would read the
    previous point's power): the sampler and the energy fallback read the instantaneous field there, and say
    which they read. Run on a GPU host: python -m pytest -q -m gpu tests/common/test_gpu.py"""
    from lib.common.gpu import nvml_handle, power_reader
    from lib.measure.sampler import Sampler

    read, kind = power_reader(nvml_handle())
    assert kind in ("instant", "1 s average") and 10 < read() < 2000  # watts of one board
    assert Sampler(gpu=True).power_kind == kind


def test_nvml_text_reads_both_spellings():
    from lib.common.gpu import text

    assert text(b"NVIDIA H100") == text("NVIDIA H100") == "NVIDIA H100"
