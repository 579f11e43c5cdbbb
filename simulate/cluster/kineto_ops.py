"""What one simulated training step runs, as PyTorch's profiler names it: ops, kernels, launches.

The Kineto writer (:mod:`fmdiag.simulate.cluster.kineto`) times these; this module only holds
the vocabulary, so the names a reader sees are the ones real H100 traces of a Llama-style
transformer carry: nested ``aten::`` ops (``aten::linear`` > ``aten::matmul`` > ``aten::mm``),
``autograd::engine::evaluate_function: *Backward0`` ops on the autograd thread, cuBLAS
``sm90_xmma_gemm_*`` kernels launched with ``cudaLaunchKernelExC``, FlashAttention kernels that
``cudaFuncSetAttribute`` first, elementwise ``vectorized_elementwise_kernel``s, the fused AdamW
``multi_tensor_apply_kernel``, and NCCL's kernels under their old (``ncclKernel_*``, NCCL
<= 2.18) or new (``ncclDevKernel_*``, NCCL >= 2.19) names.

A kernel is timed either by ``weight`` (a share of the phase, for GEMMs and attention, whose
time follows the model's FLOPs) or by ``fixed_us`` (memory-bound kernels, whose time follows
the activation size and does not shrink with a faster GEMM).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

#: CUPTI runtime callback ids of the calls the traces use.
CBID = {
    "cudaLaunchKernel": 211,
    "cudaLaunchKernelExC": 430,
    "cudaMemcpyAsync": 41,
    "cudaMemsetAsync": 51,
    "cudaStreamSynchronize": 131,
    "cudaEventRecord": 135,
    "cudaStreamWaitEvent": 147,
    "cudaStreamIsCapturing": 317,
    "cudaFuncSetAttribute": 239,
    "cudaDeviceGetAttribute": 200,
}


@dataclass(frozen=True)
class Kernel:
    """One GPU activity and how the CPU starts it."""

    name: str
    weight: float = 0.0
    fixed_us: float = 0.0
    cat: str = "kernel"  # kernel | gpu_memcpy | gpu_memset
    launch: str = "cudaLaunchKernel"
    #: A runtime call the op makes just before the launch (FlashAttention's shared-memory opt-in).
    pre: str | None = None
    #: registers per thread, shared memory, blocks per SM, warps per SM, grid x, block x, occupancy %.
    shape: tuple[int, int, float, float, int, int, int] = (32, 0, 8.0, 32.0, 4096, 128, 50)


@dataclass(frozen=True)
class Leaf:
    """A nested op chain under an :class:`Op` (outermost first); its innermost op launches ``kernel``."""

    path: tuple[str, ...]
    kernel: Kernel | None = None


@dataclass(frozen=True)
class Op:
    """A top-level framework op: its own name, the ops it calls, and (forward ops) its backward twin.

    ``autograd`` marks a forward op that records an autograd node: it gets a ``Sequence number``
    and a ``fwdbwd`` flow to the backward op whose ``twin`` names it.
    """

    name: str
    leaves: tuple[Leaf, ...] = ()
    autograd: bool = False
    twin: str | None = None


def _k(name: str, **kw: object) -> Kernel:
    return Kernel(name=name, **kw)  # type: ignore[arg-type]


_EX = "cudaLaunchKernelExC"
GEMM = _k(
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1"
    "_execute_segment_k_off_kernel__5x_cublas",
    launch=_EX,
    shape=(168, 213_248, 1.0, 12.0, 132, 384, 19),
)
GEMM_DGRAD = _k(
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_nn_n_tilesize128x256x64_warpgroupsize2x1x1"
    "_execute_segment_k_off_kernel__5x_cublas",
    launch=_EX,
    shape=(168, 213_248, 1.0, 12.0, 132, 384, 19),
)
GEMM_WGRAD = _k(
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_nt_n_tilesize128x128x64_warpgroupsize2x1x1"
    "_execute_segment_k_off_kernel__5x_cublas",
    launch=_EX,
    shape=(168, 164_096, 1.0, 12.0, 132, 384, 19),
)
FLASH_FWD = _k(
    "void flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>, "
    "false, false, false, false, true, true, false, false>(Flash_fwd_params)",
    pre="cudaFuncSetAttribute",
    shape=(255, 49_152, 1.0, 4.0, 4096, 128, 6),
)
FLASH_BWD = _k(
    "void flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128, 64, 128, 8, 2, 4, 2, "
    "false, false, cutlass::bfloat16_t>, false, false, false, false, false>(Flash_bwd_params)",
    pre="cudaFuncSetAttribute",
    shape=(255, 147_456, 1.0, 8.0, 2048, 256, 12),
)
FLASH_BWD_DOT = _k(
    "void flash_bwd_dot_do_o_kernel<true, Flash_bwd_kernel_traits<128, 64, 128, 8, 2, 4, 2, false, false, "
    "cutlass::bfloat16_t> >(Flash_bwd_params)",
    fixed_us=60,
    shape=(40, 0, 8.0, 64.0, 8192, 256, 88),
)
FLASH_BWD_DQ = _k(
    "void flash_bwd_convert_dq_kernel<Flash_bwd_kernel_traits<128, 64, 128, 8, 2, 4, 2, false, false, "
    "cutlass::bfloat16_t> >(Flash_bwd_params, int)",
    fixed_us=80,
    shape=(56, 49_152, 2.0, 16.0, 8192, 256, 24),
)
LN = _k(
    "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>"
    "(int, float, c10::BFloat16 const*, c10::BFloat16 const*, c10::BFloat16 const*, float*, float*, "
    "c10::BFloat16*)",
    fixed_us=180,
    shape=(34, 0, 8.0, 64.0, 65_536, 256, 90),
)
LN_BWD = _k(
    "void at::native::(anonymous namespace)::layer_norm_grad_input_kernel_vectorized<c10::BFloat16, float>"
    "(c10::BFloat16 const*, c10::BFloat16 const*, float const*, float const*, c10::BFloat16 const*, "
    "c10::BFloat16*, int)",
    fixed_us=260,
    shape=(40, 0, 8.0, 64.0, 65_536, 256, 86),
)
LN_BWD_GAMMA = _k(
    "void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernel_32x32<c10::BFloat16, float>"
    "(long, long, c10::BFloat16 const*, c10::BFloat16 const*, float const*, float const*, "
    "c10::BFloat16*, c10::BFloat16*)",
    fixed_us=110,
    shape=(64, 8_448, 4.0, 32.0, 128, 1024, 40),
)
ADD = _k(
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, "
    "at::detail::Array<char*, 3> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, "
    "at::detail::Array<char*, 3>)",
    fixed_us=250,
    shape=(26, 0, 8.0, 64.0, 262_144, 128, 92),
)
MUL = _k(
    "void at::native::vectorized_elementwise_kernel<4, at::native::BinaryFunctor<c10::BFloat16, "
    "c10::BFloat16, c10::BFloat16, at::native::binary_internal::MulFunctor<float> >, "
    "at::detail::Array<char*, 3> >(int, at::native::BinaryFunctor<c10::BFloat16, c10::BFloat16, "
    "c10::BFloat16, at::native::binary_internal::MulFunctor<float> >, at::detail::Array<char*, 3>)",
    fixed_us=240,
    shape=(26, 0, 8.0, 64.0, 262_144, 128, 92),
)
ROPE_MUL = _k(MUL.name, fixed_us=90, shape=MUL.shape)
ROPE_ADD = _k(ADD.name, fixed_us=90, shape=ADD.shape)
SILU = _k(
    "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::silu_kernel"
    "(at::TensorIteratorBase&)::{lambda()#1}::operator()() const::{lambda()#4}::operator()() const::"
    "{lambda(c10::BFloat16)#1}, at::detail::Array<char*, 2> >(int, at::native::(anonymous namespace)::"
    "silu_kernel(at::TensorIteratorBase&)::{lambda()#1}::operator()() const::{lambda()#4}::operator()() "
    "const::{lambda(c10::BFloat16)#1}, at::detail::Array<char*, 2>)",
    fixed_us=200,
    shape=(22, 0, 8.0, 64.0, 262_144, 128, 93),
)
SILU_BWD = _k(
    "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::"
    "silu_backward_kernel(at::TensorIteratorBase&)::{lambda()#1}::operator()() const::{lambda()#4}::"
    "operator()() const::{lambda(c10::BFloat16, c10::BFloat16)#1}, at::detail::Array<char*, 3> >(int, "
    "at::native::(anonymous namespace)::silu_backward_kernel(at::TensorIteratorBase&)::{lambda()#1}::"
    "operator()() const::{lambda()#4}::operator()() const::{lambda(c10::BFloat16, c10::BFloat16)#1}, "
    "at::detail::Array<char*, 3>)",
    fixed_us=280,
    shape=(28, 0, 8.0, 64.0, 262_144, 128, 91),
)
FILL = _k(
    "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, "
    "at::detail::Array<char*, 1> >(int, at::native::FillFunctor<float>, at::detail::Array<char*, 1>)",
    fixed_us=2,
    shape=(16, 0, 1.0, 4.0, 1, 128, 3),
)
EMBED = _k(
    "void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::BFloat16, long, unsigned int, 2, "
    "2, -2, true>(at::cuda::detail::TensorInfo<c10::BFloat16, unsigned int>, at::cuda::detail::TensorInfo"
    "<c10::BFloat16 const, unsigned int>, at::cuda::detail::TensorInfo<long const, unsigned int>, int, "
    "int, unsigned int, unsigned int, long)",
    fixed_us=130,
    shape=(30, 0, 8.0, 64.0, 1056, 128, 85),
)
EMBED_BWD = _k(
    "void at::native::(anonymous namespace)::embedding_backward_feature_kernel<c10::BFloat16, float, "
    "long>(long const*, c10::BFloat16 const*, c10::BFloat16*, int, long, int, int)",
    fixed_us=420,
    shape=(48, 4_352, 4.0, 32.0, 2048, 1024, 45),
)
SOFTMAX = _k(
    "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, c10::BFloat16, float, float, "
    "at::native::(anonymous namespace)::LogSoftMaxForwardEpilogue>(float*, c10::BFloat16 const*, int)",
    fixed_us=2_400,
    shape=(38, 4_096, 2.0, 32.0, 65_536, 1024, 48),
)
SOFTMAX_BWD = _k(
    "void at::native::(anonymous namespace)::cunn_SoftMaxBackward<4, c10::BFloat16, float, float, "
    "at::native::(anonymous namespace)::LogSoftMaxBackwardEpilogue>"
    "(float*, float const*, float const*, long)",
    fixed_us=3_100,
    shape=(40, 4_096, 2.0, 32.0, 65_536, 1024, 47),
)
NLL = _k(
    "void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d<float, float, long>"
    "(float*, float*, float const*, long const*, float const*, bool, long, long, long, long)",
    fixed_us=14,
    shape=(32, 8_192, 1.0, 32.0, 1, 1024, 3),
)
NLL_BWD = _k(
    "void at::native::(anonymous namespace)::nll_loss_backward_reduce_cuda_kernel_2d<float, long>"
    "(float*, float const*, long const*, float const*, float const*, bool, int, int, long, long)",
    fixed_us=9,
    shape=(30, 0, 1.0, 32.0, 1, 1024, 3),
)
NORM = _k(
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)"
    "::TensorListMetadata<1>, at::native::(anonymous namespace)::LpNormFunctor<c10::BFloat16, "
    "(at::native::(anonymous namespace)::NormType)1, float, float>, float*, int>(at::native::"
    "(anonymous namespace)::TensorListMetadata<1>, at::native::(anonymous namespace)::LpNormFunctor"
    "<c10::BFloat16, (at::native::(anonymous namespace)::NormType)1, float, float>, float*, int)",
    weight=0.6,
    shape=(40, 0, 4.0, 16.0, 320, 512, 30),
)
NORM_CLEANUP = _k(
    "void at::native::(anonymous namespace)::lpnorm_cleanup<c10::BFloat16, (at::native::(anonymous "
    "namespace)::NormType)1, float, float>(float const*, at::native::(anonymous namespace)::"
    "TensorListAddresses, int)",
    fixed_us=6,
    shape=(24, 2_048, 1.0, 16.0, 64, 512, 5),
)
SCALE = _k(
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)"
    "::TensorListMetadata<1>, at::native::(anonymous namespace)::BinaryOpScalarTensorFunctor<c10::"
    "BFloat16, 1, 1, 0>, std::multiplies<float>, float*>(at::native::(anonymous namespace)::"
    "TensorListMetadata<1>, at::native::(anonymous namespace)::BinaryOpScalarTensorFunctor<c10::"
    "BFloat16, 1, 1, 0>, std::multiplies<float>, float*)",
    weight=0.9,
    shape=(30, 0, 4.0, 16.0, 320, 512, 31),
)
ADAM = _k(
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)"
    "::TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4, "
    "(at::native::ADAM_MODE)1, false>, double*, double, double, double, double, double, bool, float*, "
    "float*>(at::native::(anonymous namespace)::TensorListMetadata<4>, at::native::(anonymous namespace)"
    "::FusedAdamMathFunctor<float, 4, (at::native::ADAM_MODE)1, false>, double*, double, double, double, "
    "double, double, bool, float*, float*)",
    weight=2.5,
    pre="cudaDeviceGetAttribute",  # multi_tensor_apply sizes its chunks from the device's SM count
    shape=(96, 0, 2.0, 16.0, 320, 512, 26),
)
H2D = _k("Memcpy HtoD (Pinned -> Device)", cat="gpu_memcpy", launch="cudaMemcpyAsync")
DTOD = _k("Memcpy DtoD (Device -> Device)", fixed_us=40, cat="gpu_memcpy", launch="cudaMemcpyAsync")
MEMSET = _k("Memset (Device)", fixed_us=30, cat="gpu_memset", launch="cudaMemsetAsync")


def _linear(gemm: Kernel) -> Op:
    return Op(
        "aten::linear",
        (Leaf(("aten::t", "aten::transpose")), Leaf(("aten::matmul", "aten::mm"), gemm)),
        autograd=True,
    )


def _ew(name: str, k: Kernel) -> Op:
    return Op(name, (Leaf((), k),), autograd=True)


def _ln() -> Op:
    return Op("aten::layer_norm", (Leaf(("aten::native_layer_norm",), LN),), autograd=True)


#: One transformer block's forward, in launch order (the shares are per block).
LAYER_FORWARD: tuple[Op, ...] = (
    _ln(),
    _linear(_k(GEMM.name, weight=1.5, launch=_EX, shape=GEMM.shape)),  # qkv
    _ew("aten::mul", ROPE_MUL),  # rotary
    _ew("aten::add", ROPE_ADD),
    Op(
        "aten::scaled_dot_product_attention",
        (
            Leaf(
                ("aten::_scaled_dot_product_flash_attention", "aten::_flash_attention_forward"),
                _k(FLASH_FWD.name, weight=2.2, pre=FLASH_FWD.pre, shape=FLASH_FWD.shape),
            ),
        ),
        autograd=True,
    ),
    _linear(_k(GEMM.name, weight=1.0, launch=_EX, shape=GEMM.shape)),  # out projection
    _ew("aten::add", ADD),  # residual
    _ln(),
    _linear(_k(GEMM.name, weight=3.5, launch=_EX, shape=GEMM.shape)),  # gate
    _linear(_k(GEMM.name, weight=3.5, launch=_EX, shape=GEMM.shape)),  # up
    _ew("aten::silu", SILU),
    _ew("aten::mul", MUL),
    _linear(_k(GEMM.name, weight=3.5, launch=_EX, shape=GEMM.shape)),  # down
    _ew("aten::add", ADD),  # residual
)


def _bwd(node: str, leaves: tuple[Leaf, ...], twin: str) -> Op:
    return Op(f"autograd::engine::evaluate_function: {node}", (Leaf((node,)), *leaves), twin=twin)


def _mm_bwd(weight: float) -> Op:
    return _bwd(
        "MmBackward0",
        (
            Leaf(("aten::mm",), _k(GEMM_DGRAD.name, weight=weight, launch=_EX, shape=GEMM_DGRAD.shape)),
            Leaf(("aten::mm",), _k(GEMM_WGRAD.name, weight=weight, launch=_EX, shape=GEMM_WGRAD.shape)),
        ),
        "aten::linear",
    )


def _acc() -> Op:
    """Gradient accumulation into ``.grad`` (no kernel: the first micro-batch steals the tensor)."""
    return Op(
        "autograd::engine::evaluate_function: torch::autograd::AccumulateGrad",
        (Leaf(("torch::autograd::AccumulateGrad", "aten::detach")),),
    )


#: One block's backward (reverse order); the DDP reducer copies the block's grads into its bucket.
LAYER_BACKWARD: tuple[Op, ...] = (
    _bwd("AddBackward0", (), "aten::add"),
    _mm_bwd(3.5),  # down
    _acc(),
    _bwd("MulBackward0", (Leaf(("aten::mul",), MUL), Leaf(("aten::mul",), MUL)), "aten::mul"),
    _bwd("SiluBackward0", (Leaf(("aten::silu_backward",), SILU_BWD),), "aten::silu"),
    _mm_bwd(3.5),  # up
    _acc(),
    _mm_bwd(3.5),  # gate
    _acc(),
    _bwd("AddBackward0", (Leaf(("aten::add",), ADD),), "aten::add"),
    _bwd(
        "NativeLayerNormBackward0",
        (Leaf(("aten::native_layer_norm_backward",), LN_BWD), Leaf((), LN_BWD_GAMMA)),
        "aten::layer_norm",
    ),
    _bwd("AddBackward0", (Leaf(("aten::add",), ADD),), "aten::add"),
    _mm_bwd(1.0),  # out projection
    _acc(),
    _bwd(
        "ScaledDotProductFlashAttentionBackward0",
        (
            Leaf(
                ("aten::_scaled_dot_product_flash_attention_backward", "aten::_flash_attention_backward"),
                FLASH_BWD_DOT,
            ),
            Leaf((), _k(FLASH_BWD.name, weight=5.0, pre=FLASH_BWD.pre, shape=FLASH_BWD.shape)),
            Leaf((), FLASH_BWD_DQ),
        ),
        "aten::scaled_dot_product_attention",
    ),
    _bwd("MulBackward0", (Leaf(("aten::mul",), ROPE_MUL), Leaf(("aten::mul",), ROPE_MUL)), "aten::mul"),
    _mm_bwd(1.5),  # qkv
    _acc(),
    _bwd(
        "NativeLayerNormBackward0",
        (Leaf(("aten::native_layer_norm_backward",), LN_BWD), Leaf((), LN_BWD_GAMMA)),
        "aten::layer_norm",
    ),
    Op("aten::copy_", (Leaf((), DTOD),)),  # DDP: the block's gradients into their bucket
)

#: The compact detail's block: the same vocabulary, fewer kernels (fused gate/up projection, no
#: rotary, no gradient-accumulation ops), for small bundled samples.
COMPACT_LAYER_FORWARD: tuple[Op, ...] = (
    LAYER_FORWARD[0],
    LAYER_FORWARD[1],
    LAYER_FORWARD[4],
    LAYER_FORWARD[5],
    LAYER_FORWARD[6],
    LAYER_FORWARD[7],
    _linear(_k(GEMM.name, weight=7.0, launch=_EX, shape=GEMM.shape)),  # gate and up, fused
    LAYER_FORWARD[10],
    LAYER_FORWARD[12],
    LAYER_FORWARD[13],
)
COMPACT_LAYER_BACKWARD: tuple[Op, ...] = (
    LAYER_BACKWARD[0],
    LAYER_BACKWARD[1],
    LAYER_BACKWARD[4],
    _mm_bwd(7.0),
    LAYER_BACKWARD[10],
    LAYER_BACKWARD[11],
    LAYER_BACKWARD[12],
    LAYER_BACKWARD[14],
    LAYER_BACKWARD[16],
    LAYER_BACKWARD[18],
    LAYER_BACKWARD[19],
)

#: Before the first block / after the last one: embedding, final norm, LM head, loss.
HEAD_FORWARD: tuple[Op, ...] = (
    Op(
        "aten::embedding", (Leaf(("aten::reshape", "aten::view")), Leaf(("aten::index_select",), EMBED)), True
    ),
)
TAIL_FORWARD: tuple[Op, ...] = (
    _ln(),
    _linear(_k(GEMM.name, weight=4.0, launch=_EX, shape=GEMM.shape)),  # LM head
    Op(
        "aten::cross_entropy_loss",
        (
            Leaf(("aten::log_softmax", "aten::_log_softmax"), SOFTMAX),
            Leaf(("aten::nll_loss_nd", "aten::nll_loss"), NLL),
        ),
        autograd=True,
    ),
)
#: Backward of the tail (first, right after the loss gradient is seeded) and of the embedding (last).
TAIL_BACKWARD: tuple[Op, ...] = (
    _bwd("NllLossBackward0", (Leaf(("aten::nll_loss_backward",), NLL_BWD),), "aten::cross_entropy_loss"),
    _bwd(
        "LogSoftmaxBackward0",
        (Leaf(("aten::_log_softmax_backward_data",), SOFTMAX_BWD),),
        "aten::cross_entropy_loss",
    ),
    _mm_bwd(4.0),
    _acc(),
    _bwd(
        "NativeLayerNormBackward0",
        (Leaf(("aten::native_layer_norm_backward",), LN_BWD), Leaf((), LN_BWD_GAMMA)),
        "aten::layer_norm",
    ),
)
HEAD_BACKWARD: tuple[Op, ...] = (
    _bwd(
        "EmbeddingBackward0",
        (Leaf(("aten::embedding_backward", "aten::embedding_dense_backward"), EMBED_BWD),),
        "aten::embedding",
    ),
    _acc(),
    Op("aten::copy_", (Leaf((), DTOD),)),
)
#: Seeding the loss gradient on the main thread (``loss.backward()`` before the engine starts).
SEED_GRAD = Op(
    "aten::ones_like", (Leaf(("aten::empty_like", "aten::empty_strided")), Leaf(("aten::fill_",), FILL))
)
#: Gradient clipping (full detail only) and the fused AdamW step, per parameter group.
CLIP: tuple[Op, ...] = (
    Op("aten::_foreach_norm", (Leaf((), NORM), Leaf((), NORM_CLEANUP))),
    Op("aten::stack", (Leaf(("aten::cat",), _k(ADD.name, fixed_us=4, shape=(26, 0, 1.0, 4.0, 1, 128, 3))),)),
    Op("aten::linalg_vector_norm", (Leaf((), _k(NORM_CLEANUP.name, fixed_us=5, shape=NORM_CLEANUP.shape)),)),
    Op("aten::_foreach_mul_", (Leaf((), SCALE),)),
)
ADAMW = Op("aten::_fused_adamw_", (Leaf((), ADAM), Leaf((), ADAM)))
ZERO_GRAD = Op("aten::zero_", (Leaf(("aten::fill_",), MEMSET),))
#: The batch's host-to-device copy (timed from its bytes by the writer).
BATCH_COPY = Op("aten::to", (Leaf(("aten::_to_copy", "aten::copy_"), H2D),))

NCCL_VERSIONS = {"new": "2.21.5", "old": "2.17.1"}
#: PyTorch's names for a collective: record_param_comms' ``Collective name`` and the user annotation.
COLLECTIVE_NAMES = {
    "all_reduce": ("allreduce", "nccl:all_reduce"),
    "all_gather": ("_allgather_base", "nccl:_all_gather_base"),
    "reduce_scatter": ("_reduce_scatter_base", "nccl:_reduce_scatter_base"),
    # Pipeline stages' point-to-point transfers (torch.distributed.isend / irecv).
    "send": ("send", "nccl:send"),
    "recv": ("recv", "nccl:recv"),
    # Expert parallelism's token dispatch and combine (torch.distributed.all_to_all_single).
    "all_to_all": ("all_to_allv", "nccl:all_to_all"),
}
#: NCCL runs sends and receives (and all-to-all, a group of them) in one kernel kind, always with
#: the SIMPLE protocol on a ring channel; the new names carry no protocol or type.
_P2P = ("send", "recv", "all_to_all")
_DTYPES = {"BFloat16": ("bf16", "bfloat16"), "Float": ("f32", "float"), "Half": ("f16", "half")}
_NCCL_NEW_KIND = {
    "all_reduce": "AllReduce_Sum_{t}",
    "all_gather": "AllGather",
    "reduce_scatter": "ReduceScatter_Sum_{t}",
}
_NCCL_OLD_KIND = {
    "all_reduce": "AllReduce_{p}_Sum_{t}",
    "all_gather": "AllGather_{p}_Sum_int8_t",
    "reduce_scatter": "ReduceScatter_{p}_Sum_{t}",
}
_NCCL_ARGS = "(ncclDevComm*, unsigned long, ncclWork*)"


def nccl_protocol(nbytes: int) -> str:
    """NCCL's ring protocol for a message: LL for small, LL128 for medium, SIMPLE for large ones."""
    if nbytes < 64 << 10:
        return "RING_LL"
    if nbytes < 16 << 20:
        return "RING_LL128"
    return "RING_SIMPLE"


def nccl_kernel_name(
    naming: str, kind: str = "all_reduce", dtype: str = "BFloat16", nbytes: int = 1 << 30
) -> str:
    """The NCCL kernel a collective runs, as NCCL ``naming`` (``new`` >= 2.19, ``old`` <= 2.18) names it."""
    if kind not in COLLECTIVE_NAMES:
        raise ValueError(f"collective kind {kind!r}: expected one of {sorted(COLLECTIVE_NAMES)}")
    new_t, old_t = _DTYPES.get(dtype, ("bf16", "bfloat16"))
    proto = nccl_protocol(nbytes)
    if kind in _P2P and naming in ("new", "old"):
        return (
            f"ncclDevKernel_SendRecv{_NCCL_ARGS}"
            if naming == "new"
            else f"ncclKernel_SendRecv_RING_SIMPLE_Sum_int8_t{_NCCL_ARGS}"
        )
    if naming == "new":
        return f"ncclDevKernel_{_NCCL_NEW_KIND[kind].format(t=new_t)}_{proto}{_NCCL_ARGS}"
    if naming == "old":
        return f"ncclKernel_{_NCCL_OLD_KIND[kind].format(p=proto, t=old_t)}{_NCCL_ARGS}"
    raise ValueError(f"nccl naming {naming!r}: expected new or old")


def json_safe(name: str) -> str:
    """``name`` unchanged, after checking it needs no JSON escaping (the writer formats it raw)."""
    if json.dumps(name)[1:-1] != name:
        raise ValueError(f"{name!r} needs JSON escaping")
    return name
