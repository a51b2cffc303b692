"""CUDA C++ source of the fused ACE kernels of :mod:`ace_core.backends.cupy`.

Kept as a string (compiled by NVRTC through ``cupy.RawModule``) so that it
ships as an ordinary module, without package data. It includes no header:
half and bfloat16 values are handled as their 16-bit patterns (the ``ace_f16``
and ``ace_bf16`` structs), so that NVRTC needs neither ``cuda_fp16.h`` nor
``cuda_bf16.h``. The half conversions are inline PTX on the device and, where
``__CUDA_ARCH__`` is not defined (the same text compiled as C++ for the host,
as the tests do), bit operations that round as ``cvt.rn`` does.

Template parameters of the kernels:

- ``In``: how the scores and the gradient are stored: ``float``, ``double``,
  ``ace_f16`` (IEEE half) or ``ace_bf16`` (bfloat16);
- ``Acc``: the accumulation type, ``float`` or ``double``;
- ``ITEMS``: classes held in registers per thread; a block of ``blockDim.x``
  threads (a multiple of 32, at most 1024) covers ``ITEMS * blockDim.x >= C``
  classes, so each score is loaded from memory once per kernel.

The per-class log-mass ``log Σ_t y`` is kept in two parts, a shift and a
log-sum (``mass_max``, ``mass_log_sum``), as the per-step log-normalizer is:
with ``mass_max`` the largest of the very ``log y`` values the backward
recomputes and ``mass_log_sum >= 0``, ``log r = (log y - mass_max) -
mass_log_sum <= 0`` holds exactly, so ``r`` stays in [0, 1] at any logits.

Kernels (names as given to ``name_expressions``):

``ace_forward_tiles<In, Acc, ITEMS>``
    One block per (sample b, tile of consecutive steps). For each valid row of
    the tile: the row max and ``log Σ_k exp(a - max)`` (two block reductions in
    a fixed order), then, per class, an online ``(max, Σ exp(log y - max))``
    of ``log y = (a - max) - log_sum`` over the tile's valid rows. Writes the
    per-step ``(B, T)`` outputs and the two ``(B, n_tiles, C)`` partials of
    each tile and class. A masked row writes ``max = 0`` and ``log_sum = log
    C`` (what the generic kernel gives for its zeroed rows) and adds nothing.
``ace_combine_tiles<Acc>``
    One thread per (b, k): the tile partials combined in tile order into
    ``mass_max`` (their max) and ``mass_log_sum`` (deterministic: no atomics
    anywhere).
``ace_backward_rows<In, Acc, ITEMS>``
    One block per row (b, t): ``pull_k = N̄_k r_tk`` with ``log r = (log y -
    mass_max_k) - mass_log_sum_k`` for the classes with ``N_k > 0`` (0 for the
    others), ``s = Σ_k pull_k`` (one block reduction), then ``g_b (y s -
    pull)`` written in ``In``. A masked row is written as zeros without reading
    its scores.
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
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
#else
    // Exact, as cvt.f32.f16 is; a NaN becomes the canonical float NaN.
    const unsigned int sign = ((unsigned int)x.bits & 0x8000u) << 16;
    const unsigned int exponent = ((unsigned int)x.bits >> 10) & 0x1fu;
    unsigned int mantissa = (unsigned int)x.bits & 0x3ffu;
    if (exponent == 0x1fu) return __uint_as_float(mantissa != 0u ? 0x7fffffffu : (sign | 0x7f800000u));
    if (exponent != 0u) return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    if (mantissa == 0u) return __uint_as_float(sign);
    unsigned int biased = 113u;  // a subnormal half is a normal float: shift its leading 1 into place
    while ((mantissa & 0x400u) == 0u) {
        mantissa <<= 1;
        --biased;
    }
    return __uint_as_float(sign | (biased << 23) | ((mantissa & 0x3ffu) << 13));
#endif
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
#ifdef __CUDA_ARCH__
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
#else
    // Round to nearest, ties to even, as cvt.rn.f16.f32: overflow to inf, subnormal halves, a NaN
    // becomes the canonical half NaN.
    const unsigned int u = __float_as_uint(v);
    const unsigned int sign = (u >> 16) & 0x8000u;
    const unsigned int magnitude = u & 0x7fffffffu;
    if (magnitude > 0x7f800000u) {
        h = 0x7fffu;
    } else if (magnitude >= 0x477ff000u) {  // >= 65520, the midpoint above the largest half
        h = (unsigned short)(sign | 0x7c00u);
    } else if (magnitude >= 0x38800000u) {  // a normal half: rebias the exponent, round 13 bits away
        const unsigned int rebiased = magnitude - 0x38000000u;
        h = (unsigned short)(sign | ((rebiased + 0xfffu + ((rebiased >> 13) & 1u)) >> 13));
    } else if (magnitude < 0x33000000u) {  // below half the smallest subnormal: a signed zero
        h = (unsigned short)sign;
    } else {  // a subnormal half: the mantissa in units of 2^-24, rounded to nearest even
        const unsigned int shift = 126u - (magnitude >> 23);  // 14..24
        const unsigned int mantissa = (magnitude & 0x7fffffu) | 0x800000u;
        const unsigned int half = 1u << (shift - 1u);
        const unsigned int rest = mantissa & ((1u << shift) - 1u);
        unsigned int q = mantissa >> shift;
        if (rest > half || (rest == half && (q & 1u))) ++q;
        h = (unsigned short)(sign | q);
    }
#endif
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
__global__ void __launch_bounds__(1024, 1) ace_forward_tiles(
    const In* __restrict__ scores,            // (B, T, C)
    const unsigned char* __restrict__ valid,  // (B, T), or null: every step is valid
    const int steps,
    const int classes,
    const int rows_per_tile,
    const int n_tiles,
    Acc* __restrict__ step_max,               // (B, T)
    Acc* __restrict__ step_log_sum,           // (B, T)
    Acc* __restrict__ partial_max,            // (B, n_tiles, C)
    Acc* __restrict__ partial_sum)            // (B, n_tiles, C)
{
    __shared__ Acc scratch[33];
    const Acc neg_inf = ace_neg_inf<Acc>();
    const long long b = blockIdx.x / n_tiles;
    const int tile = blockIdx.x % n_tiles;
    const int t_begin = tile * rows_per_tile;
    const int t_end = min(steps, t_begin + rows_per_tile);

    // Online (max, Σ exp(log y - max)) over this tile's valid rows, per class held by this thread.
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
                const Acc x = (v[j] - m) - log_sum;  // log y, <= 0; the backward recomputes it alike
                if (x > col_max[j] || x != x) {
                    // exp(-inf - x) = 0 on the first contribution; a NaN makes both parts NaN
                    col_sum[j] = col_sum[j] * ace_exp(col_max[j] - x) + (Acc)1;
                    col_max[j] = x;
                } else if (x != neg_inf) {
                    // y = 0 adds nothing (and -inf - -inf would be NaN)
                    col_sum[j] += ace_exp(x - col_max[j]);
                }
            }
        }
    }

    const long long offset = (b * n_tiles + tile) * (long long)classes;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
        const int k = threadIdx.x + j * blockDim.x;
        if (k < classes) {  // (-inf, 0) for a tile with no mass (or no valid row)
            partial_max[offset + k] = col_max[j];
            partial_sum[offset + k] = col_sum[j];
        }
    }
}

template <typename Acc>
__global__ void ace_combine_tiles(
    const Acc* __restrict__ partial_max,  // (B, n_tiles, C)
    const Acc* __restrict__ partial_sum,  // (B, n_tiles, C)
    const int n_tiles,
    const int classes,
    const long long total,                // B * C
    Acc* __restrict__ mass_max,           // (B, C)
    Acc* __restrict__ mass_log_sum)       // (B, C)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const Acc neg_inf = ace_neg_inf<Acc>();
    const long long b = i / classes;
    const int k = (int)(i - b * classes);
    const long long first = b * n_tiles * (long long)classes + k;
    Acc m = neg_inf;
    for (int j = 0; j < n_tiles; ++j) m = ace_max(m, partial_max[first + (long long)j * classes]);
    // Σ_j sum_j exp(max_j - m) >= 1: the tile that holds the max adds its sum, itself >= 1.
    Acc s = (Acc)0;
    for (int j = 0; j < n_tiles; ++j) {
        const Acc tile_max = partial_max[first + (long long)j * classes];
        if (tile_max != neg_inf) s += partial_sum[first + (long long)j * classes] * ace_exp(tile_max - m);
    }
    mass_max[i] = m;
    // zero mass: (-inf, 0), so that mass_max + mass_log_sum = -inf; NaN stays NaN
    mass_log_sum[i] = m == neg_inf ? (Acc)0 : ace_log(s);
}

// ---------------------------------------------------------------- backward

template <typename In, typename Acc, int ITEMS>
__global__ void __launch_bounds__(1024, 1) ace_backward_rows(
    const In* __restrict__ scores,            // (B, T, C)
    const unsigned char* __restrict__ valid,  // (B, T), or null: every step is valid
    const Acc* __restrict__ counts,           // (B, C)
    const Acc* __restrict__ lengths,          // (B,)
    const Acc* __restrict__ step_max,         // (B, T)
    const Acc* __restrict__ step_log_sum,     // (B, T)
    const Acc* __restrict__ mass_max,         // (B, C)
    const Acc* __restrict__ mass_log_sum,     // (B, C)
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
    const Acc* shift = mass_max + b * classes;
    const Acc* log_sum_k = mass_log_sum + b * classes;
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
                // in log space, r in [0, 1] exactly: finite where y underflows (extreme logits)
                const Acc log_r = (log_y[j] - shift[k]) - log_sum_k[k];
                // <= 0 already for this forward's residuals; the clip keeps r <= 1 for another split
                pull[j] = (c / safe_length) * ace_exp(log_r > (Acc)0 ? (Acc)0 : log_r);
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
