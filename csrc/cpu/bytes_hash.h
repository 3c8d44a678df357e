// Hashing and equality of short byte strings for the native vocabulary (csrc/cpu/vocab.h) and the
// TFRecord encoder's feature-name table: inline (no call, no PLT) and quick on the 4-20 byte ids
// and words that most values are. The hash is wyhash's scheme (a 64x64->128 multiply per 16
// bytes); tables only need it well spread, it is never stored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ncs {
namespace bytes {

static inline uint64_t r8(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

static inline uint64_t r4(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

static inline uint64_t mum(uint64_t a, uint64_t b) {
  const __uint128_t r = static_cast<__uint128_t>(a) * b;
  return uint64_t(r) ^ uint64_t(r >> 64);
}

static inline uint64_t hash(const uint8_t* p, size_t n) {
  constexpr uint64_t s0 = 0xa0761d6478bd642fULL, s1 = 0xe7037ed1a0b428dbULL, s2 = 0x8ebc6af09c88c6e3ULL;
  uint64_t seed = s0 ^ mum(uint64_t(n) ^ s0, s1);
  uint64_t a, b;
  if (n <= 16) {
    if (n >= 4) {
      const size_t d = (n >> 3) << 2;
      a = (r4(p) << 32) | r4(p + d);
      b = (r4(p + n - 4) << 32) | r4(p + n - 4 - d);
    } else if (n > 0) {
      a = (uint64_t(p[0]) << 16) | (uint64_t(p[n >> 1]) << 8) | p[n - 1];
      b = 0;
    } else {
      a = b = 0;
    }
  } else {
    size_t i = n;
    while (i > 16) {
      seed = mum(r8(p) ^ s1, r8(p + 8) ^ seed);
      p += 16;
      i -= 16;
    }
    a = r8(p + i - 16);
    b = r8(p + i - 8);
  }
  return mum(s1 ^ uint64_t(n), mum(a ^ s1, b ^ seed ^ s2));
}

// a[0:n] == b[0:n]
static inline bool equal(const uint8_t* a, const uint8_t* b, size_t n) {
  if (n >= 8) {
    if (n > 16) return std::memcmp(a, b, n) == 0;
    return r8(a) == r8(b) && r8(a + n - 8) == r8(b + n - 8);
  }
  if (n >= 4) return r4(a) == r4(b) && r4(a + n - 4) == r4(b + n - 4);
  for (size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) return false;
  return true;
}

}  // namespace bytes
}  // namespace ncs
