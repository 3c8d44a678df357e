// TFRecord framing and protobuf wire-format helpers shared by the native TFRecord readers
// (csrc/cpu/tfrecord.cpp: the parser into columns, csrc/cpu/tfrecord_encode.cpp: the encoder).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ncs {
namespace wire {

// CRC-32C (Castagnoli): the SSE4.2 instruction where the CPU has it, else slicing by 8.
uint32_t crc32c(const uint8_t* p, size_t n);

static inline uint32_t masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u; }

static inline uint32_t le32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

static inline uint64_t le64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// ---------------------------------------------------------------- protobuf wire format
struct ProtoError {
  const char* what;
};

static inline uint64_t varint(const uint8_t*& p, const uint8_t* end) {
  uint64_t r = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    if (p >= end) throw ProtoError{"truncated varint"};
    uint8_t b = *p++;
    r |= uint64_t(b & 0x7F) << shift;
    if (!(b & 0x80)) return r;
  }
  throw ProtoError{"varint too long"};
}

// A varint, one byte without the loop (tags and short lengths: nearly all of them).
static inline uint64_t varint1(const uint8_t*& p, const uint8_t* end) {
  if (p < end && *p < 0x80) return *p++;
  return varint(p, end);
}

// Calls f(field number, wire type, start, end, varint value) for each field of [p, end).
template <typename F>
static inline void fields(const uint8_t* p, const uint8_t* end, F&& f) {
  while (p < end) {
    uint64_t key = varint1(p, end);
    uint32_t num = uint32_t(key >> 3), wire = uint32_t(key & 7);
    if (num == 0) throw ProtoError{"field number 0"};
    if (wire == 0) {
      uint64_t v = varint(p, end);
      f(num, wire, p, p, v);
    } else if (wire == 1) {
      if (end - p < 8) throw ProtoError{"truncated fixed64"};
      f(num, wire, p, p + 8, 0);
      p += 8;
    } else if (wire == 2) {
      uint64_t n = varint1(p, end);
      if (n > uint64_t(end - p)) throw ProtoError{"length-delimited field runs past its message"};
      f(num, wire, p, p + n, 0);
      p += n;
    } else if (wire == 5) {
      if (end - p < 4) throw ProtoError{"truncated fixed32"};
      f(num, wire, p, p + 4, 0);
      p += 4;
    } else {
      throw ProtoError{"unsupported wire type"};
    }
  }
}

}  // namespace wire
}  // namespace ncs
