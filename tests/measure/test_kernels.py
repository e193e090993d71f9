"""lib.measure.kernels: GPU busy time, per-kernel aggregation, categories and readable names.

The CUPTI capture itself (``profile_requests``) needs a GPU: tests/sweep/test_bench_gpu.py runs it inside
a real sweep. Here: the arithmetic that turns recorded intervals into the report's figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lib.measure.kernels import CATEGORIES, aggregate, busy_us, category, short_name  # noqa: E402


def test_busy_time_is_the_union_of_intervals():
    assert busy_us([]) == 0.0
    assert busy_us([(0, 10)]) == 10
    assert busy_us([(0, 10), (20, 25)]) == 15            # a gap is not busy
    assert busy_us([(0, 10), (5, 12)]) == 12             # overlap counted once
    assert busy_us([(5, 12), (0, 10), (12, 13)]) == 13   # unsorted, touching
    assert busy_us([(0, 100), (10, 20), (30, 40)]) == 100  # nested


def test_aggregate_per_request_and_sorted():
    # Two requests 10 ms apart, each: a 3 ms conv, a 2 ms gap (the GPU waits for the host), a 1 ms add;
    # the second request also has a 1 ms copy overlapping its conv (counted in the sum, not twice in busy).
    conv = "void cudnn_conv_kernel<float>(int)"
    add = "void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add<float>>(int)"
    events = []
    for t0 in (0.0, 10_000.0):
        events += [(conv, t0, t0 + 3000), (add, t0 + 5000, t0 + 6000)]
    events.append(("Memcpy DtoD (Device -> Device)", 11_000.0, 12_000.0))
    p = aggregate(events, iters=2)
    assert p.iters == 2 and p.launches == 2.5
    assert [k["category"] for k in p.kernels] == ["convolution / matmul", "elementwise / activation", "copy/memset"]
    assert p.kernels[0]["ms"] == pytest.approx(3.0) and p.kernels[0]["calls"] == 1
    assert p.kernels[2]["ms"] == pytest.approx(0.5) and p.kernels[2]["calls"] == 0.5
    assert p.kernel_ms == pytest.approx(4.5)
    assert p.busy_ms == pytest.approx(4.0)  # the gaps are not busy; the overlapping copy adds nothing
    assert p.kernels[0]["short"] == "cudnn_conv_kernel<float>"
    assert p.to_dict()["kernels"][0] == {"name": conv, "calls": 1.0, "ms": pytest.approx(3.0)}


def test_aggregate_refuses_nonsense():
    with pytest.raises(ValueError, match="iters=0"):
        aggregate([], iters=0)
    with pytest.raises(ValueError, match="ends before it starts"):
        aggregate([("k", 10.0, 5.0)], iters=1)


@pytest.mark.parametrize("name, expected", [
    ("void cudnn::bn_fw_inf_1C11_kernel_NCHW<float, float, true, 1>(float, float)", "normalization"),
    ("void onnxruntime::cuda::_UnaryElementWise<float, float, onnxruntime::contrib::cuda::OP_QuickGelu<float>, 256, 4>"
     "(float const*, float*)", "elementwise / activation"),
    # cuDNN's tensor op (ONNX Runtime's conv bias add): its parameter list names a "reducedDivisorArray",
    # which must not make it a reduction.
    ("void op_generic_tensor_kernel<4, float, float, float, 256, (cudnnGenericOp_t)0, (cudnnNanPropagation_t)0, 0>"
     "(cudnnTensorStruct, float*, cudnnTensorStruct, float const*, float, cudnnActivationStruct, reducedDivisorArray, "
     "int)", "elementwise / activation"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<float, float, float, false, true>(int)",
     "layout (NCHW<->NHWC, transpose, cast)"),
    ("sm90_xmma_fprop_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize64x192x32_kernel__5x_cudnn",
     "convolution / matmul"),
    ("void at::native::(anonymous namespace)::conv_depthwise2d_forward_kernel<3, float, int>(int)",
     "convolution / matmul"),
    ("nvjet_sm90_hsh_64x8_64x16_1x4_h_bz_NNT", "convolution / matmul"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float>(int)", "convolution / matmul"),
    ("void onnxruntime::cuda::detail::reduce_matrix_columns_kernel<float, float, float>(int, int)",
     "reduction / pooling"),
    ("Memcpy HtoD (Pageable -> Device)", "copy/memset"),
    ("Memset (Device)", "copy/memset"),
    ("fmha_cutlassF_f16_aligned_64x128_rf_sm80", "attention"),
    # Inductor names fused kernels after every op in them: the prefix decides.
    ("triton_poi_fused_convolution_silu_0", "elementwise / activation"),
    ("triton_red_fused_mean_3", "reduction / pooling"),
    ("triton_tem_fused_mm_1", "convolution / matmul"),
    ("some_vendor_kernel_xyz", "other"),
])
def test_category(name, expected):
    assert expected in CATEGORIES
    assert category(name) == expected


def test_short_name():
    assert short_name("void at::native::(anonymous namespace)::conv_depthwise2d_forward_kernel<3, float, int>"
                      "(torch::PackedTensorAccessor<float>)") == "conv_depthwise2d_forward_kernel<3, float, int>"
    assert short_name("void onnxruntime::cuda::_UnaryElementWise<float, float, onnxruntime::contrib::cuda::"
                      "OP_QuickGelu<float>, 256, 4>(float const*, float*, int)") == \
        "_UnaryElementWise<float, float, OP_QuickGelu<float>, 256, 4>"
    assert short_name("Memcpy HtoD (Pageable -> Device)") == "Memcpy HtoD (Pageable -> Device)"
    long = short_name("k" * 200, limit=40)
    assert len(long) == 40 and long.endswith("…")
