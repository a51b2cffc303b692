"""CUDA C++ source of the fused ACE kernels of :mod:`ace_core.backends.cupy`.

Kept as a string (compiled by NVRTC through ``cupy.RawModule``) so that it
ships as an ordinary module, without package data. It includes no header:
half and bfloat16 values are handled as their 16-bit patterns (the ``ace_f16``
and ``ace_bf16`` structs), so that NVRTC needs neither ``cuda_fp16.h`` nor
``cuda_bf16.h``.

Template parameters of the kernels:

- ``In``: how the scores and the gradient are stored: ``float``, ``double``,
  ``ace_f16`` (IEEE half) or ``ace_bf16`` (bfloat16);
- ``Acc``: the accumulation type, ``float`` or ``double``;
- ``ITEMS``: classes held in registers per thread; a block of ``blockDim.x``
  threads (a multiple of 32, at most 1024) covers ``ITEMS * blockDim.x >= C``
  classes, so each score is loaded from memory once per kernel.

Kernels (names as given to ``name_expressions``):

``ace_forward_tiles<In, Acc, ITEMS>``
    One block per (sample b, tile of consecutive steps). For each valid row of
    the tile: the row max and ``log Σ_k exp(a - max)`` (two block reductions in
    a fixed order), then, per class, an online log-sum-exp of
    ``log y = (a - max) - log_sum`` over the tile's valid rows. Writes the
    per-step ``(B, T)`` outputs and one partial ``(B, n_tiles, C)`` value per
    tile and class. A masked row writes ``max = 0`` and ``log_sum = log C``
    (what the generic kernel gives for its zeroed rows) and adds nothing.
``ace_combine_tiles<Acc>``
    One thread per (b, k): log-sum-exp of the tile partials in tile order
    (deterministic: no atomics anywhere).
``ace_backward_rows<In, Acc, ITEMS>``
    One block per row (b, t): ``pull_k = N̄_k r_tk = exp(log y_tk + log N̄_k -
    log_mass_k)`` for the classes with ``N_k > 0`` (0 for the others), ``s =
    Σ_k pull_k`` (one block reduction), then ``g_b (y s - pull)`` written in
    ``In``. A masked row is written as zeros without reading its scores.
"""

from __future__ import annotations

__all__ = ["SOURCE", "forward_name", "combine_name", "backward_name"]


def forward_name(in_type: str, acc_type: str, items: int) -> str:
    """The name expression of the forward kernel for these template arguments."""
    return f"ace_forward_tiles<{in_type}, {acc_type}, {items}>"


def combine_name(acc_type: str) -> str:
    """The name expression of the kernel that combines the forward's tile partials."""
    return f"ace_combine_tiles<{acc_type}>"


def backward_name(in_type: str, acc_type: str, items: int) -> str:
    """The name expression of the backward kernel for these template arguments."""
    return f"ace_backward_rows<{in_type}, {acc_type}, {items}>"


SOURCE = r"""
// ---------------------------------------------------------------- storage types

// 16-bit patterns; converted with PTX cvt (half) or bit shifts (bfloat16), so
// that no CUDA header is needed.
struct ace_f16 { unsigned short bits; };
struct ace_bf16 { unsigned short bits; };

__device__ __forceinline__ float ace_widen(float x) { return x; }
__device__ __forceinline__ double ace_widen(double x) { return x; }
__device__ __forceinline__ float ace_widen(ace_f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
__device__ __forceinline__ float ace_widen(ace_bf16 x) {
    // bfloat16 is the high half of a float32.
    return __uint_as_float(((unsigned int)x.bits) << 16);
}

__device__ __forceinline__ void ace_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void ace_store(float* p, double v) { *p = (float)v; }
__device__ __forceinline__ void ace_store(double* p, double v) { *p = v; }
__device__ __forceinline__ void ace_store(double* p, float v) { *p = (double)v; }
__device__ __forceinline__ void ace_store(ace_f16* p, float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p->bits = h;
}
__device__ __forceinline__ void ace_store(ace_f16* p, double v) { ace_store(p, (float)v); }
__device__ __forceinline__ void ace_store(ace_bf16* p, float v) {
    unsigned int u = __float_as_uint(v);
    unsigned short h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h = (unsigned short)((u >> 16) | 0x0040u);  // NaN stays a (quiet) NaN
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
        h = (unsigned short)(u >> 16);
    }
    p->bits = h;
}
__device__ __forceinline__ void ace_store(ace_bf16* p, double v) { ace_store(p, (float)v); }

// ---------------------------------------------------------------- arithmetic

template <typename T> __device__ __forceinline__ T ace_neg_inf();
template <> __device__ __forceinline__ float ace_neg_inf<float>() { return __uint_as_float(0xff800000u); }
template <> __device__ __forceinline__ double ace_neg_inf<double>() {
    return __longlong_as_double((long long)0xfff0000000000000ULL);
}

// Full-precision exp and log (no fast-math intrinsics): the float32 results
// are compared with a float64 reference at rtol 1e-5.
__device__ __forceinline__ float ace_exp(float x) { return expf(x); }
__device__ __forceinline__ double ace_exp(double x) { return exp(x); }
__device__ __forceinline__ float ace_log(float x) { return logf(x); }
__device__ __forceinline__ double ace_log(double x) { return log(x); }

// max that propagates NaN (as xp.max does); fmax would drop it.
template <typename T> __device__ __forceinline__ T ace_max(T a, T b) { return (a > b || a != a) ? a : b; }

struct ace_sum_op {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct ace_max_op {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return ace_max(a, b); }
};

// Butterfly over the 32 lanes: every lane ends with the same value, and the
// order of the operations is fixed, so the result is bitwise reproducible.
template <typename T, typename Op> __device__ __forceinline__ T ace_warp_reduce(T v, Op op) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// Reduction over the whole block (blockDim.x a multiple of 32); every thread
// must call it and gets the result. scratch holds 33 values.
template <typename T, typename Op>
__device__ __forceinline__ T ace_block_reduce(T v, T identity, Op op, T* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n_warps = blockDim.x >> 5;
    v = ace_warp_reduce(v, op);
    __syncthreads();  // the previous reduction's result may still be being read
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < n_warps ? scratch[lane] : identity;
        v = ace_warp_reduce(v, op);
        if (lane == 0) scratch[32] = v;
    }
    __syncthreads();
    return scratch[32];
}

// ---------------------------------------------------------------- forward

template <typename In, typename Acc, int ITEMS>
__global__ void __launch_bounds__(1024) ace_forward_tiles(
    const In* __restrict__ scores,            // (B, T, C)
    const unsigned char* __restrict__ valid,  // (B, T), or null: every step is valid
    const int steps,
    const int classes,
    const int rows_per_tile,
    const int n_tiles,
    Acc* __restrict__ step_max,               // (B, T)
    Acc* __restrict__ step_log_sum,           // (B, T)
    Acc* __restrict__ partial)                // (B, n_tiles, C)
{
    __shared__ Acc scratch[33];
    const Acc neg_inf = ace_neg_inf<Acc>();
    const long long b = blockIdx.x / n_tiles;
    const int tile = blockIdx.x % n_tiles;
    const int t_begin = tile * rows_per_tile;
    const int t_end = min(steps, t_begin + rows_per_tile);

    // Online log-sum-exp over this tile's valid rows, per class held by this thread.
    Acc col_max[ITEMS];
    Acc col_sum[ITEMS];
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
        col_max[j] = neg_inf;
        col_sum[j] = (Acc)0;
    }

    for (int t = t_begin; t < t_end; ++t) {
        const long long row = b * steps + t;
        if (valid != nullptr && !valid[row]) {  // the same branch for the whole block
            if (threadIdx.x == 0) {
                step_max[row] = (Acc)0;
                step_log_sum[row] = ace_log((Acc)classes);
            }
            continue;
        }
        const In* a = scores + row * classes;
        Acc v[ITEMS];
        Acc m = neg_inf;
#pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
            const int k = threadIdx.x + j * blockDim.x;
            v[j] = neg_inf;
            if (k < classes) {
                v[j] = (Acc)ace_widen(a[k]);
                m = ace_max(m, v[j]);
            }
        }
        m = ace_block_reduce(m, neg_inf, ace_max_op(), scratch);
        Acc s = (Acc)0;
#pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
            const int k = threadIdx.x + j * blockDim.x;
            if (k < classes) s += ace_exp(v[j] - m);
        }
        s = ace_block_reduce(s, (Acc)0, ace_sum_op(), scratch);
        const Acc log_sum = ace_log(s);
        if (threadIdx.x == 0) {
            step_max[row] = m;
            step_log_sum[row] = log_sum;
        }
#pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
            const int k = threadIdx.x + j * blockDim.x;
            if (k < classes) {
                const Acc x = (v[j] - m) - log_sum;  // log y, <= 0
                if (x > col_max[j]) {
                    // exp(-inf - x) = 0 on the first contribution
                    col_sum[j] = col_sum[j] * ace_exp(col_max[j] - x) + (Acc)1;
                    col_max[j] = x;
                } else if (x != neg_inf) {
                    // y = 0 adds nothing (and -inf - -inf would be NaN); NaN propagates
                    col_sum[j] += ace_exp(x - col_max[j]);
                }
            }
        }
    }

    Acc* out = partial + (b * n_tiles + tile) * (long long)classes;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
        const int k = threadIdx.x + j * blockDim.x;
        // -inf + log(0) = -inf for a tile with no mass (or no valid row)
        if (k < classes) out[k] = col_max[j] + ace_log(col_sum[j]);
    }
}

template <typename Acc>
__global__ void ace_combine_tiles(
    const Acc* __restrict__ partial,  // (B, n_tiles, C)
    const int n_tiles,
    const int classes,
    const long long total,            // B * C
    Acc* __restrict__ log_mass)       // (B, C)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const Acc neg_inf = ace_neg_inf<Acc>();
    const long long b = i / classes;
    const int k = (int)(i - b * classes);
    const Acc* p = partial + b * n_tiles * (long long)classes + k;
    Acc m = neg_inf;
    for (int j = 0; j < n_tiles; ++j) m = ace_max(m, p[(long long)j * classes]);
    Acc result = neg_inf;
    if (m != neg_inf) {  // NaN goes this way too and stays NaN
        Acc s = (Acc)0;
        for (int j = 0; j < n_tiles; ++j) s += ace_exp(p[(long long)j * classes] - m);
        result = m + ace_log(s);
    }
    log_mass[i] = result;
}

// ---------------------------------------------------------------- backward

template <typename In, typename Acc, int ITEMS>
__global__ void __launch_bounds__(1024) ace_backward_rows(
    const In* __restrict__ scores,            // (B, T, C)
    const unsigned char* __restrict__ valid,  // (B, T), or null: every step is valid
    const Acc* __restrict__ counts,           // (B, C)
    const Acc* __restrict__ lengths,          // (B,)
    const Acc* __restrict__ step_max,         // (B, T)
    const Acc* __restrict__ step_log_sum,     // (B, T)
    const Acc* __restrict__ log_mass,         // (B, C)
    const Acc* __restrict__ grad_out,         // (B,)
    const int steps,
    const int classes,
    In* __restrict__ grad)                    // (B, T, C)
{
    __shared__ Acc scratch[33];
    const long long row = blockIdx.x;
    const long long b = row / steps;
    In* out = grad + row * classes;

    if (valid != nullptr && !valid[row]) {  // the same branch for the whole block
#pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
            const int k = threadIdx.x + j * blockDim.x;
            if (k < classes) ace_store(out + k, (Acc)0);
        }
        return;
    }

    const In* a = scores + row * classes;
    const Acc* n = counts + b * classes;
    const Acc* lm = log_mass + b * classes;
    const Acc m = step_max[row];
    const Acc log_sum = step_log_sum[row];
    const Acc length = lengths[b];
    const Acc safe_length = length > (Acc)0 ? length : (Acc)1;
    const Acc g = grad_out[b];

    Acc log_y[ITEMS];
    Acc pull[ITEMS];  // N̄_k r_tk, 0 where N_k = 0
    Acc s = (Acc)0;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
        const int k = threadIdx.x + j * blockDim.x;
        log_y[j] = (Acc)0;
        pull[j] = (Acc)0;
        if (k < classes) {
            log_y[j] = ((Acc)ace_widen(a[k]) - m) - log_sum;
            const Acc c = n[k];
            if (c > (Acc)0) {
                // in log space: r may be finite where y underflows (extreme logits)
                pull[j] = ace_exp(log_y[j] + (ace_log(c / safe_length) - lm[k]));
            }
            s += pull[j];
        }
    }
    s = ace_block_reduce(s, (Acc)0, ace_sum_op(), scratch);
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
        const int k = threadIdx.x + j * blockDim.x;
        if (k < classes) ace_store(out + k, (ace_exp(log_y[j]) * s - pull[j]) * g);
    }
}
"""
