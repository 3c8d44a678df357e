// The fused feature cross of the first layer: y = X (W ⊙ M)^T + b with
// X[b] = [flatten(emb[b] emb[b]^T), flatten(emb[b])] (width F*F + F*d), without ever writing X.
//
//  gram            G[b] = emb[b] emb[b]^T, one block per sample, emb[b] staged in shared memory.
//  cross_fwd       the GEMM's A tiles read columns < F*F from G and the rest from emb.
//  cross_dinput    dG = dy (W⊙M)[:, :FF] and dE = dy (W⊙M)[:, FF:] from one GEMM whose epilogue
//                  writes the two column ranges to two buffers (dE straight into d(emb)).
//  cross_emb_grad  d(emb)[b] += (dG[b] + dG[b]^T) emb[b], one block per sample in shared memory.
//  cross_dw        dW = (dy^T X) ⊙ M with B tiles read from G and emb, mask in the epilogue,
//                  split-K over the batch.
// G is the only intermediate ([B, F*F], 400 of the 1680 columns at F = 20, d = 64).
#include "gemm_tile.cuh"
#include "ncs_cuda.cuh"

namespace ncs {
namespace cuda {
namespace {

using detail::from_float;
using detail::to_float;

constexpr int kCrossThreads = 256;
constexpr size_t kDefaultSmem = 48 * 1024;  // usable without opting in to more

inline unsigned sample_grid(int b) {
  // one block per sample, grid-stride beyond that many blocks
  return static_cast<unsigned>(b < (1 << 20) ? b : (1 << 20));
}

// kShared: emb[b] is staged as fp32 [F][d + 1] (the +1 makes the row-wise reads of the dot
// products hit distinct banks); otherwise (huge F*d) it is read from global memory directly.
template <typename T, bool kShared>
__global__ void __launch_bounds__(kCrossThreads) gram_kernel(const T* __restrict__ emb, T* __restrict__ g, int b,
                                                             int f, int d) {
  extern __shared__ float s_emb[];
  const int ff = f * f, fd = f * d, ld = d + 1;
  for (int s = blockIdx.x; s < b; s += gridDim.x) {
    const T* e = emb + static_cast<int64_t>(s) * fd;
    if constexpr (kShared) {
      for (int i = threadIdx.x; i < fd; i += blockDim.x) s_emb[(i / d) * ld + (i % d)] = to_float(e[i]);
      __syncthreads();
    }
    for (int o = threadIdx.x; o < ff; o += blockDim.x) {
      const int i = o / f, j = o % f;
      float acc = 0.0f;
      if constexpr (kShared) {
        const float* ri = s_emb + i * ld;
        const float* rj = s_emb + j * ld;
        for (int k = 0; k < d; ++k) acc = fmaf(ri[k], rj[k], acc);
      } else {
        const T* ri = e + static_cast<int64_t>(i) * d;
        const T* rj = e + static_cast<int64_t>(j) * d;
        for (int k = 0; k < d; ++k) acc = fmaf(to_float(ri[k]), to_float(rj[k]), acc);
      }
      // fmaf(a, b, c) == fmaf(b, a, c): G[i, j] and G[j, i] come out bitwise equal
      g[static_cast<int64_t>(s) * ff + o] = from_float<T>(acc);
    }
    if constexpr (kShared) __syncthreads();  // s_emb is rewritten for the next sample
  }
}

// demb[b] += (dg[b] + dg[b]^T) emb[b]. kShared: the symmetrised dG[b] [F][F] and emb[b] [F][d]
// are staged in fp32 shared memory.
template <typename T, bool kShared>
__global__ void __launch_bounds__(kCrossThreads) cross_emb_grad_kernel(const T* __restrict__ emb,
                                                                       const T* __restrict__ dg, T* demb, int b,
                                                                       int f, int d) {
  extern __shared__ float smem[];
  const int ff = f * f, fd = f * d;
  float* s_sym = smem;       // [F][F]
  float* s_emb = smem + ff;  // [F][d]
  for (int s = blockIdx.x; s < b; s += gridDim.x) {
    const T* e = emb + static_cast<int64_t>(s) * fd;
    const T* gs = dg + static_cast<int64_t>(s) * ff;
    T* out = demb + static_cast<int64_t>(s) * fd;
    if constexpr (kShared) {
      for (int o = threadIdx.x; o < ff; o += blockDim.x) {
        const int i = o / f, j = o % f;
        s_sym[o] = to_float(gs[o]) + to_float(gs[j * f + i]);
      }
      for (int o = threadIdx.x; o < fd; o += blockDim.x) s_emb[o] = to_float(e[o]);
      __syncthreads();
    }
    for (int o = threadIdx.x; o < fd; o += blockDim.x) {
      const int i = o / d, k = o % d;
      float acc = 0.0f;
      if constexpr (kShared) {
        for (int j = 0; j < f; ++j) acc = fmaf(s_sym[i * f + j], s_emb[j * d + k], acc);
      } else {
        for (int j = 0; j < f; ++j) {
          const float sym = to_float(gs[i * f + j]) + to_float(gs[j * f + i]);
          acc = fmaf(sym, to_float(e[static_cast<int64_t>(j) * d + k]), acc);
        }
      }
      out[o] = from_float<T>(to_float(out[o]) + acc);  // dE was written here by cross_dinput
    }
    if constexpr (kShared) __syncthreads();
  }
}

}  // namespace

template <typename T>
cudaError_t gram(const T* emb, T* g, int b, int f, int d, cudaStream_t stream) {
  if (b <= 0 || f <= 0) return cudaSuccess;
  const size_t smem = static_cast<size_t>(f) * (d + 1) * sizeof(float);
  if (smem <= kDefaultSmem) {
    gram_kernel<T, true><<<sample_grid(b), kCrossThreads, smem, stream>>>(emb, g, b, f, d);
  } else {
    gram_kernel<T, false><<<sample_grid(b), kCrossThreads, 0, stream>>>(emb, g, b, f, d);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t cross_emb_grad(const T* emb, const T* dg, T* demb, int b, int f, int d, cudaStream_t stream) {
  if (b <= 0 || f <= 0 || d <= 0) return cudaSuccess;
  const size_t smem = (static_cast<size_t>(f) * f + static_cast<size_t>(f) * d) * sizeof(float);
  if (smem <= kDefaultSmem) {
    cross_emb_grad_kernel<T, true><<<sample_grid(b), kCrossThreads, smem, stream>>>(emb, dg, demb, b, f, d);
  } else {
    cross_emb_grad_kernel<T, false><<<sample_grid(b), kCrossThreads, 0, stream>>>(emb, dg, demb, b, f, d);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t cross_fwd(const T* g, const T* emb, const T* weight, const int32_t* packed, const T* bias, T* y, int b,
                      int f, int d, int n, cudaStream_t stream) {
  const int ff = f * f, fd = f * d, k = ff + fd;
  const int64_t words = (static_cast<int64_t>(k) + 31) / 32;
  gemm::CrossA<T> a{gemm::CrossInput<T>{g, emb, ff, fd}};
  gemm::MaskedWeightT<T> bw{weight, packed, k, words};
  gemm::StoreBias<T> epi{y, bias, n};
  return gemm::launch_gemm<T>(a, bw, epi, b, n, k, 1, stream);
}

template <typename T>
cudaError_t cross_dinput(const T* dy, const T* weight, const int32_t* packed, T* dg, T* demb, int b, int f, int d,
                         int n, cudaStream_t stream) {
  const int ff = f * f, fd = f * d, k = ff + fd;
  const int64_t words = (static_cast<int64_t>(k) + 31) / 32;
  gemm::RowMajorA<T> a{dy, n};
  gemm::MaskedWeight<T> bw{weight, packed, k, words};
  gemm::StoreSplitColumns<T> epi{dg, ff, demb, fd, ff};
  return gemm::launch_gemm<T>(a, bw, epi, b, k, n, 1, stream);
}

template <typename T>
cudaError_t cross_dw(const T* dy, const T* g, const T* emb, const int32_t* packed, T* dw, float* workspace,
                     int splits, int b, int f, int d, int n, cudaStream_t stream) {
  const int ff = f * f, fd = f * d, k = ff + fd;
  if (n <= 0 || k <= 0) return cudaSuccess;
  const int64_t words = (static_cast<int64_t>(k) + 31) / 32;
  const bool split = splits > 1;
  if (split && workspace == nullptr) return cudaErrorInvalidValue;
  gemm::TransposedA<T> a{dy, n};
  gemm::CrossB<T> bx{gemm::CrossInput<T>{g, emb, ff, fd}};
  gemm::MaskedGradStore<T> epi{dw, split ? workspace : nullptr, packed, k, words};
  cudaError_t err = gemm::launch_gemm<T>(a, bx, epi, n, k, b, split ? splits : 1, stream);
  if (err != cudaSuccess || !split) return err;
  return masked_convert<T>(workspace, packed, dw, n, k, stream);
}

#define NCS_INSTANTIATE_CROSS(T)                                                                              \
  template cudaError_t gram<T>(const T*, T*, int, int, int, cudaStream_t);                                    \
  template cudaError_t cross_emb_grad<T>(const T*, const T*, T*, int, int, int, cudaStream_t);                \
  template cudaError_t cross_fwd<T>(const T*, const T*, const T*, const int32_t*, const T*, T*, int, int, int, \
                                    int, cudaStream_t);                                                       \
  template cudaError_t cross_dinput<T>(const T*, const T*, const int32_t*, T*, T*, int, int, int, int,         \
                                       cudaStream_t);                                                         \
  template cudaError_t cross_dw<T>(const T*, const T*, const T*, const int32_t*, T*, float*, int, int, int, int, \
                                   int, cudaStream_t);

NCS_INSTANTIATE_CROSS(float)
NCS_INSTANTIATE_CROSS(__half)
NCS_INSTANTIATE_CROSS(__nv_bfloat16)

#undef NCS_INSTANTIATE_CROSS

}  // namespace cuda
}  // namespace ncs
