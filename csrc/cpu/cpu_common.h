// Helpers shared by the CPU kernels in csrc/cpu: argument checks and the bit-unpacking inner
// loops. Everything here is header-only and inlined into the kernels that use it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace ncs {
namespace cpu {

inline int64_t words_for(int64_t k) { return (k + 31) / 32; }

inline void check_cpu_float(const char* name, const at::Tensor& t, int64_t ndim) {
  TORCH_CHECK(t.defined(), name, ": expected a tensor, got None");
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              ": the cpu backend supports float32 and float64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == ndim, name, ": expected a ", ndim, "-D tensor, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous tensor");
}

inline void check_same_dtype(const char* name, const at::Tensor& t, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ", ref.scalar_type(), " (the dtype of ",
              ref_name, "), got ", t.scalar_type());
}

inline void check_packed(const at::Tensor& packed, int64_t n, int64_t k) {
  TORCH_CHECK(packed.defined(), "packed: expected an int32 packed mask, got None");
  TORCH_CHECK(packed.device().is_cpu(), "packed: expected a CPU tensor, got one on ", packed.device());
  TORCH_CHECK(packed.scalar_type() == at::kInt, "packed: expected int32, got ", packed.scalar_type());
  TORCH_CHECK(packed.dim() == 2 && packed.size(0) == n && packed.size(1) == words_for(k),
              "packed: expected shape [", n, ", ", words_for(k), "] for a weight [", n, ", ", k, "], got ",
              packed.sizes());
  TORCH_CHECK(packed.is_contiguous(), "packed: expected a contiguous tensor");
}

inline void check_bias(const c10::optional<at::Tensor>& bias, const at::Tensor& weight) {
  if (bias.has_value() && bias->defined()) {
    check_cpu_float("bias", *bias, 1);
    check_same_dtype("bias", *bias, weight, "weight");
    TORCH_CHECK(bias->size(0) == weight.size(0), "bias: expected shape [", weight.size(0), "], got ", bias->sizes());
  }
}

// Unsigned integer of the same width as a float type: masking is done on the bit pattern
// (x & 0 == +0.0 exactly, whatever x is, NaN and Inf included), which needs no branch and
// vectorises as a plain AND.
template <typename T> struct same_width_uint;
template <> struct same_width_uint<float> { using type = uint32_t; };
template <> struct same_width_uint<double> { using type = uint64_t; };

// kBit.v[j] == 1u << j. Testing `word & kBit.v[j]` against a constant vector needs only AND
// and compare-equal, which the baseline ISA (SSE2) vectorises; `(word >> j) & 1` would need a
// per-lane variable shift (AVX2), so the compiler would leave that loop scalar.
struct BitTable {
  uint32_t v[32];
  constexpr BitTable() : v() {
    for (int j = 0; j < 32; ++j) v[j] = 1u << j;
  }
};
static constexpr BitTable kBit{};

inline bool bit_set(uint32_t word, int j) { return (word & kBit.v[j]) != 0; }

// dst[j] = bit j of `word` ? src[j] : +0.0, for j < count (count <= 32). src may equal dst.
template <typename scalar_t>
inline void mask_word(const scalar_t* src, scalar_t* dst, uint32_t word, int count) {
  using U = typename same_width_uint<scalar_t>::type;
  // The full word has a compile-time trip count of 32: unrolled and vectorised (AND, CMPEQ, AND).
  if (count == 32) {
    for (int j = 0; j < 32; ++j) {
      U bits;
      std::memcpy(&bits, &src[j], sizeof(U));
      bits &= bit_set(word, j) ? ~U(0) : U(0);
      std::memcpy(&dst[j], &bits, sizeof(U));
    }
  } else {
    for (int j = 0; j < count; ++j) {
      U bits;
      std::memcpy(&bits, &src[j], sizeof(U));
      bits &= bit_set(word, j) ? ~U(0) : U(0);
      std::memcpy(&dst[j], &bits, sizeof(U));
    }
  }
}

// keep ? a : b on the bit pattern, with keep all ones or all zeros: exact (returns one of the
// two values bit for bit), branch-free, and vectorisable where a float select is not.
template <typename scalar_t>
inline scalar_t select_bits(typename same_width_uint<scalar_t>::type keep, scalar_t a, scalar_t b) {
  using U = typename same_width_uint<scalar_t>::type;
  U x, y;
  std::memcpy(&x, &a, sizeof(U));
  std::memcpy(&y, &b, sizeof(U));
  const U r = (x & keep) | (y & ~keep);
  scalar_t out;
  std::memcpy(&out, &r, sizeof(U));
  return out;
}

// One row of K values masked by its packed words: dst = src ⊙ M (src may equal dst).
template <typename scalar_t>
inline void mask_row(const scalar_t* src, scalar_t* dst, const int32_t* words, int64_t k) {
  const int64_t full = k / 32;
  for (int64_t w = 0; w < full; ++w) {
    mask_word<scalar_t>(src + w * 32, dst + w * 32, static_cast<uint32_t>(words[w]), 32);
  }
  const int rem = static_cast<int>(k - full * 32);
  if (rem) mask_word<scalar_t>(src + full * 32, dst + full * 32, static_cast<uint32_t>(words[full]), rem);
}

// Rows per parallel task so that each task touches at least ~32K elements.
inline int64_t row_grain(int64_t row_len) {
  const int64_t target = 32768;
  return row_len >= target ? 1 : (target + row_len - 1) / std::max<int64_t>(row_len, 1);
}

}  // namespace cpu
}  // namespace ncs
