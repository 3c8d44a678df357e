// A tiled shared-memory GEMM, C[M, N] = sum_k A(m, k) B(k, n), whose operands are read through
// small loader objects and whose result goes through an epilogue object. The loaders are where
// the mask is unpacked (W tiles) and where the feature cross is rebuilt from two pointers; the
// epilogues are where bias, the dW mask and the split-K reduction happen. Used by
// masked_gemm.cu and cross.cu (each includes this header, so each .cu compiles alone).
//
// Block tile BM x BN x BK = 128 x 64 x 32, 256 threads (8 warps).
//  - __half / __nv_bfloat16 on sm_80+: tensor cores via WMMA (16x16x16, fp32 accumulators);
//    warps form a 4 x 2 grid, each owning a 32 x 32 sub-tile (2 x 2 fragments).
//  - float (and 16-bit types below sm_80): FMA on fp32, each thread owning an 8 x 4 register
//    tile at rows ty + 16 i, columns tx + 16 j (strided so shared-memory reads are conflict-free
//    and stores coalesce).
// Shared-memory tiles follow the operand's contiguous dimension in global memory, so that the
// tile loads are coalesced and the shared stores conflict-free: a k-contiguous A is stored
// row-major [BM][BK+pad] (WMMA row_major), an m-contiguous A column-major [BK][BM+pad]
// (WMMA col_major); a k-contiguous B column-major [BN][BK+pad], an n-contiguous B row-major.
// Out-of-range rows/columns and k beyond the slice end are loaded as 0, so every edge (sizes
// not multiples of the tile, K not a multiple of 32, M = 1) is handled by the loads plus the
// bounds check in the epilogue.
//
// Split-K: blockIdx.z selects the reduction slice [z * k_chunk, min(K, (z + 1) * k_chunk)).
#pragma once

#include <mma.h>

#include <type_traits>

#include "common.cuh"

namespace ncs {
namespace cuda {
namespace gemm {

using detail::from_float;
using detail::mask_bit;
using detail::to_float;
using detail::zero;

constexpr int BM = 128;
constexpr int BN = 64;
constexpr int BK = 32;
constexpr int kThreads = 256;

// ---- operand loaders: A(m, k) / B(k, n), called only in range ----------------------------------

// A dense row-major matrix p with leading dimension ld, read as an operand: op(i, j) =
// p[i * ld + j], or p[j * ld + i] with kSwap. kContig: whether consecutive reduction indices k
// are consecutive in memory (it picks the order in which a tile is filled).
template <typename T, bool kSwap, bool kContig>
struct Dense {
  static constexpr bool kContigK = kContig;
  const T* __restrict__ p;
  int64_t ld;
  __device__ __forceinline__ T operator()(int i, int j) const { return kSwap ? p[j * ld + i] : p[i * ld + j]; }
};
// A(m, k) = p[m * ld + k]  (x in the forward pass, dy in dx = dy W)
template <typename T>
using RowMajorA = Dense<T, false, true>;
// A(m, k) = p[k * ld + m]  (dy^T in dW = dy^T x: m runs over the outputs, k over the batch)
template <typename T>
using TransposedA = Dense<T, true, false>;
// B(k, n) = p[k * ld + n]  (x in dW = dy^T x)
template <typename T>
using RowMajorB = Dense<T, false, false>;

// B(k, n) = (W ⊙ M)[n, k] with kT (forward: y = x (W ⊙ M)^T), else (W ⊙ M)[k, n] (input
// gradient: dx = dy (W ⊙ M); k runs over the outputs). The bit is unpacked while loading.
template <typename T, bool kT>
struct MaskedWeightOp {
  static constexpr bool kContigK = kT;
  const T* __restrict__ w;
  const int32_t* __restrict__ packed;
  int64_t k_in;   // in_features (row length of W)
  int64_t words;  // ceil(k_in / 32)
  __device__ __forceinline__ T operator()(int k, int n) const {
    const int row = kT ? n : k, col = kT ? k : n;
    return mask_bit(packed, words, row, col) ? w[row * k_in + col] : zero<T>();
  }
};
template <typename T>
using MaskedWeightT = MaskedWeightOp<T, true>;
template <typename T>
using MaskedWeight = MaskedWeightOp<T, false>;

// The feature-cross input X[b, c] = c < FF ? G[b, c] : emb[b, c - FF], read from two pointers so
// that X [B, FF + F*d] never exists in memory.
template <typename T>
struct CrossInput {
  const T* __restrict__ g;    // [B, FF]
  const T* __restrict__ emb;  // [B, Fd]
  int ff;
  int fd;
  __device__ __forceinline__ T at(int b, int c) const {
    return c < ff ? g[static_cast<int64_t>(b) * ff + c] : emb[static_cast<int64_t>(b) * fd + (c - ff)];
  }
};

// X[b, c] as an operand: A(m = b, k = c) in the cross forward (kContig), B(k = b, n = c) in the
// cross dW = dy^T X.
template <typename T, bool kContig>
struct CrossOperand {
  static constexpr bool kContigK = kContig;
  CrossInput<T> x;
  __device__ __forceinline__ T operator()(int i, int j) const { return x.at(i, j); }
};
template <typename T>
using CrossA = CrossOperand<T, true>;
template <typename T>
using CrossB = CrossOperand<T, false>;

// ---- epilogues: called once per in-range output (m, n) with the fp32 sum ----------------------

// out[m, n] = T(acc + bias[n])  (bias may be nullptr)
template <typename T>
struct StoreBias {
  T* out;
  const T* bias;
  int64_t ld;
  __device__ __forceinline__ void operator()(int m, int n, float acc) const {
    if (bias != nullptr) acc += to_float(bias[n]);
    out[m * ld + n] = from_float<T>(acc);
  }
};

// Columns < split go to out1[m, n], the rest to out2[m, n - split] (cross input gradient: dG and
// dE of the same GEMM land in two buffers).
template <typename T>
struct StoreSplitColumns {
  T* out1;
  int64_t ld1;
  T* out2;
  int64_t ld2;
  int split;
  __device__ __forceinline__ void operator()(int m, int n, float acc) const {
    if (n < split)
      out1[m * ld1 + n] = from_float<T>(acc);
    else
      out2[m * ld2 + (n - split)] = from_float<T>(acc);
  }
};

// dW[m, n] = bit ? acc : 0 (exactly 0). With a split reduction the partial sum is instead added
// atomically into the zeroed fp32 workspace (masked-out entries are skipped: the finishing
// masked_convert writes 0 there anyway).
template <typename T>
struct MaskedGradStore {
  T* out;
  float* workspace;  // non-null iff split
  const int32_t* __restrict__ packed;
  int64_t ld;  // = in_features
  int64_t words;
  __device__ __forceinline__ void operator()(int m, int n, float acc) const {
    const bool keep = mask_bit(packed, words, m, n);
    if (workspace != nullptr) {
      if (keep) atomicAdd(workspace + m * ld + n, acc);
    } else {
      out[m * ld + n] = keep ? from_float<T>(acc) : zero<T>();
    }
  }
};

// ---- tile loading -------------------------------------------------------------------------------

// Fill a tile of R operand rows [r0, r0 + R) by reduction indices [k0, k0 + BK) (0 outside
// r < r_lim, k < k_end) from get(r, k): [R][BK + PAD] when kContigK, else [BK][R + PAD].
// Consecutive threads take consecutive elements along the contiguous dimension.
template <typename T, int PAD, int R, bool kContigK, class Get>
__device__ __forceinline__ void load_tile(T* s, const Get& get, int r0, int k0, int r_lim, int k_end) {
  if constexpr (kContigK) {
#pragma unroll 4
    for (int e = threadIdx.x; e < R * BK; e += kThreads) {
      const int r = e / BK, c = e % BK;
      const int i = r0 + r, k = k0 + c;
      s[r * (BK + PAD) + c] = (i < r_lim && k < k_end) ? get(i, k) : zero<T>();
    }
  } else {
#pragma unroll 4
    for (int e = threadIdx.x; e < R * BK; e += kThreads) {
      const int c = e / R, r = e % R;
      const int i = r0 + r, k = k0 + c;
      s[c * (R + PAD) + r] = (i < r_lim && k < k_end) ? get(i, k) : zero<T>();
    }
  }
}

// B(k, n) read as get(n, k): the B tile's rows are its columns n.
template <class BOp>
struct ByColumn {
  const BOp& b;
  __device__ __forceinline__ auto operator()(int n, int k) const { return b(k, n); }
};

// The A tile: rows [m0, m0 + BM), row-major [BM][BK + PAD] or column-major [BK][BM + PAD].
template <typename T, int PAD, class AOp>
__device__ __forceinline__ void load_a_tile(T* sa, const AOp& a, int m0, int k0, int m_lim, int k_end) {
  load_tile<T, PAD, BM, AOp::kContigK>(sa, a, m0, k0, m_lim, k_end);
}

// The B tile: columns [n0, n0 + BN), column-major [BN][BK + PAD] or row-major [BK][BN + PAD].
template <typename T, int PAD, class BOp>
__device__ __forceinline__ void load_b_tile(T* sb, const BOp& b, int k0, int n0, int k_end, int n_lim) {
  load_tile<T, PAD, BN, BOp::kContigK>(sb, ByColumn<BOp>{b}, n0, k0, n_lim, k_end);
}

template <bool kContigK>
__host__ __device__ constexpr int a_tile_elems(int pad) {
  return kContigK ? BM * (BK + pad) : BK * (BM + pad);
}
template <bool kContigK>
__host__ __device__ constexpr int b_tile_elems(int pad) {
  return kContigK ? BN * (BK + pad) : BK * (BN + pad);
}

// ---- FMA body (fp32, and the fallback below sm_80) ---------------------------------------------

template <typename T, class AOp, class BOp, class Epi>
__device__ __forceinline__ void gemm_body_fma(const AOp& a, const BOp& b, const Epi& epi, int m_lim, int n_lim,
                                              int k_beg, int k_end) {
  constexpr int PAD = 1;  // odd leading dimensions: conflict-free column reads of fp32 tiles
  constexpr int A_ELEMS = a_tile_elems<AOp::kContigK>(PAD);
  constexpr int B_ELEMS = b_tile_elems<BOp::kContigK>(PAD);
  __shared__ __align__(16) unsigned char sa_raw[A_ELEMS * sizeof(T)];
  __shared__ __align__(16) unsigned char sb_raw[B_ELEMS * sizeof(T)];
  T* sa = reinterpret_cast<T*>(sa_raw);
  T* sb = reinterpret_cast<T*>(sb_raw);

  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  for (int k0 = k_beg; k0 < k_end; k0 += BK) {
    load_a_tile<T, PAD>(sa, a, m0, k0, m_lim, k_end);
    load_b_tile<T, PAD>(sb, b, k0, n0, k_end, n_lim);
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < BK; ++kk) {
      float av[8], bv[4];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int r = ty + 16 * i;
        av[i] = to_float(AOp::kContigK ? sa[r * (BK + PAD) + kk] : sa[kk * (BM + PAD) + r]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = tx + 16 * j;
        bv[j] = to_float(BOp::kContigK ? sb[c * (BK + PAD) + kk] : sb[kk * (BN + PAD) + c]);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();  // the next iteration overwrites the tiles
  }

#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int m = m0 + ty + 16 * i;
    if (m >= m_lim) break;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + tx + 16 * j;
      if (n < n_lim) epi(m, n, acc[i][j]);
    }
  }
}

// ---- WMMA body (__half / __nv_bfloat16 on sm_80+) -------------------------------------------------

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define NCS_GEMM_HAS_WMMA 1
template <typename T, class AOp, class BOp, class Epi>
__device__ __forceinline__ void gemm_body_wmma(const AOp& a, const BOp& b, const Epi& epi, int m_lim, int n_lim,
                                               int k_beg, int k_end) {
  namespace wmma = nvcuda::wmma;
  // PAD = 8 elements keeps every leading dimension a multiple of 8 (16 bytes) and every fragment
  // pointer 32-byte aligned, as load_matrix_sync requires: row offsets are multiples of 16 rows
  // times (32 + 8) or (64 + 8) or (128 + 8) elements, column offsets multiples of 16 elements.
  constexpr int PAD = 8;
  constexpr int A_ELEMS = a_tile_elems<AOp::kContigK>(PAD);
  constexpr int B_ELEMS = b_tile_elems<BOp::kContigK>(PAD);
  constexpr int LDA = AOp::kContigK ? BK + PAD : BM + PAD;
  constexpr int LDB = BOp::kContigK ? BK + PAD : BN + PAD;
  __shared__ __align__(128) unsigned char sa_raw[A_ELEMS * sizeof(T)];
  __shared__ __align__(128) unsigned char sb_raw[B_ELEMS * sizeof(T)];
  __shared__ __align__(128) float stage[kThreads / 32][16 * 16];  // per-warp epilogue staging
  T* sa = reinterpret_cast<T*>(sa_raw);
  T* sb = reinterpret_cast<T*>(sb_raw);

  using ALayout = typename std::conditional<AOp::kContigK, wmma::row_major, wmma::col_major>::type;
  using BLayout = typename std::conditional<BOp::kContigK, wmma::col_major, wmma::row_major>::type;

  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp % 4, wn = warp / 4;  // this warp's 32 x 32 sub-tile

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(fc[i][j], 0.0f);

  for (int k0 = k_beg; k0 < k_end; k0 += BK) {
    load_a_tile<T, PAD>(sa, a, m0, k0, m_lim, k_end);
    load_b_tile<T, PAD>(sb, b, k0, n0, k_end, n_lim);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, ALayout> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = wm * 32 + i * 16;
        const T* p = AOp::kContigK ? sa + r * LDA + kk : sa + kk * LDA + r;
        wmma::load_matrix_sync(fa[i], p, LDA);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int c = wn * 32 + j * 16;
        const T* p = BOp::kContigK ? sb + c * LDB + kk : sb + kk * LDB + c;
        wmma::load_matrix_sync(fb[j], p, LDB);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(fc[i][j], fa[i], fb[j], fc[i][j]);
    }
    __syncthreads();
  }

  // Epilogue: each warp stages one 16 x 16 accumulator at a time in its own shared buffer and
  // hands the in-range elements to the epilogue (bounds checked per element).
  float* st = stage[warp];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(st, fc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      const int mb = m0 + wm * 32 + i * 16, nb = n0 + wn * 32 + j * 16;
#pragma unroll
      for (int e = lane; e < 256; e += 32) {
        const int m = mb + e / 16, n = nb + e % 16;
        if (m < m_lim && n < n_lim) epi(m, n, st[e]);
      }
      __syncwarp();  // st is rewritten by the next fragment
    }
  }
}
#endif

template <typename T, class AOp, class BOp, class Epi>
__global__ void __launch_bounds__(kThreads)
    gemm_kernel(AOp a, BOp b, Epi epi, int m_lim, int n_lim, int k_total, int k_chunk) {
  const int k_beg = blockIdx.z * k_chunk;
  const int k_end = min(k_total, k_beg + k_chunk);
#if defined(NCS_GEMM_HAS_WMMA)
  if constexpr (std::is_same<T, float>::value) {
    gemm_body_fma<T>(a, b, epi, m_lim, n_lim, k_beg, k_end);
  } else {
    gemm_body_wmma<T>(a, b, epi, m_lim, n_lim, k_beg, k_end);
  }
#else
  gemm_body_fma<T>(a, b, epi, m_lim, n_lim, k_beg, k_end);
#endif
}

// k_chunk for `splits` slices of a reduction of length k_total: a multiple of BK, and no slice
// left empty (the caller's split count is reduced accordingly via splits_used).
inline int split_chunk(int k_total, int splits) {
  if (splits < 1) splits = 1;
  int chunk = (k_total + splits - 1) / splits;
  chunk = ((chunk + BK - 1) / BK) * BK;
  return chunk < BK ? BK : chunk;
}

// Launch C[m_lim, n_lim] = A B over a reduction of k_total, in `splits` slices.
template <typename T, class AOp, class BOp, class Epi>
cudaError_t launch_gemm(const AOp& a, const BOp& b, const Epi& epi, int m_lim, int n_lim, int k_total, int splits,
                        cudaStream_t stream) {
  if (m_lim <= 0 || n_lim <= 0) return cudaSuccess;
  const int chunk = split_chunk(k_total, splits);
  int z = k_total > 0 ? (k_total + chunk - 1) / chunk : 1;  // k_total == 0: one pass writes acc = 0
  const dim3 grid((n_lim + BN - 1) / BN, (m_lim + BM - 1) / BM, z);
  if (grid.y > 65535u || grid.z > 65535u) return cudaErrorInvalidConfiguration;
  gemm_kernel<T, AOp, BOp, Epi><<<grid, kThreads, 0, stream>>>(a, b, epi, m_lim, n_lim, k_total, chunk);
  return cudaGetLastError();
}

// How many reduction slices make the output tiles of an [m x n] GEMM fill the device: about two
// waves of blocks (2 blocks of 256 threads per SM), each slice at least 4 k-tiles long.
inline int choose_splits(int m, int n, int k_total) {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();  // clear the error: fall back to no split
    return 1;
  }
  const long long tiles = static_cast<long long>((m + BM - 1) / BM) * ((n + BN - 1) / BN);
  const long long target = 2LL * sms;
  if (tiles <= 0 || tiles >= target) return 1;
  long long splits = (target + tiles - 1) / tiles;
  const long long max_splits = (k_total + 4 * BK - 1) / (4 * BK);
  if (splits > max_splits) splits = max_splits;
  if (splits > 64) splits = 64;
  return splits < 1 ? 1 : static_cast<int>(splits);
}

}  // namespace gemm
}  // namespace cuda
}  // namespace ncs
