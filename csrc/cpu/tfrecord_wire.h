// TFRecord framing and protobuf wire-format helpers shared by the native TFRecord readers
// (csrc/cpu/tfrecord.cpp: the parser into columns, csrc/cpu/tfrecord_encode.cpp: the encoder).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

#include "cpu/bytes_hash.h"

namespace ncs {
namespace wire {

// CRC-32C (Castagnoli): the SSE4.2 instruction where the CPU has it, else slicing by 8.
uint32_t crc32c(const uint8_t* p, size_t n);

static inline uint32_t masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u; }

static inline uint32_t le32(const uint8_t* p) { return uint32_t(bytes::r4(p)); }  // little-endian host
static inline uint64_t le64(const uint8_t* p) { return bytes::r8(p); }

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

// The record at base[pos:size): kWhole (payload, length set), kPartial (needs more bytes), or a
// CRC mismatch (checked when check_crc: the length header's first, as soon as 12 bytes are there).
enum RecordState { kWhole, kPartial, kBadHeader, kBadPayload };
static inline RecordState record_at(const uint8_t* base, size_t pos, size_t size, bool check_crc,
                                    const uint8_t*& payload, uint64_t& length) {
  if (size - pos < 12) return kPartial;
  const uint8_t* h = base + pos;
  length = le64(h);
  if (check_crc && masked(crc32c(h, 8)) != le32(h + 8)) return kBadHeader;
  if (length > size - pos - 12 || size - pos - 12 - length < 4) return kPartial;
  payload = h + 12;
  if (check_crc && masked(crc32c(payload, size_t(length))) != le32(payload + length)) return kBadPayload;
  return kWhole;
}

// A bad record: std::invalid_argument("record K: msg"), K counted from the start of the buffer.
[[noreturn]] static inline void record_error(int64_t rec, const std::string& msg) {
  throw std::invalid_argument("record " + std::to_string(rec) + ": " + msg);
}

// record_at with a CRC mismatch thrown (record_error); false: a partial record (needs more bytes).
static inline bool next_record(const uint8_t* base, size_t pos, size_t size, bool check_crc, int64_t rec,
                               const uint8_t*& payload, uint64_t& length) {
  const RecordState st = record_at(base, pos, size, check_crc, payload, length);
  if (st == kBadHeader) record_error(rec, "length header CRC mismatch");
  if (st == kBadPayload) record_error(rec, "payload CRC mismatch");
  return st == kWhole;
}

// Calls f(key, value start, value end) for each Features.feature map entry of the Example
// payload [p, end) (value nullptr: an entry without one). Map entries come in no fixed order
// (writers serialise the map in hash order).
template <typename F>
static inline void example_entries(const uint8_t* p, const uint8_t* end, F&& f) {
  fields(p, end, [&](uint32_t num, uint32_t wire, const uint8_t* ms, const uint8_t* me, uint64_t) {
    if (num != 1 || wire != 2) return;
    fields(ms, me, [&](uint32_t n, uint32_t w, const uint8_t* es, const uint8_t* ee, uint64_t) {
      if (n != 1 || w != 2) return;
      std::string_view key;
      bool has_key = false;
      const uint8_t* vs = nullptr;
      const uint8_t* ve = nullptr;
      // the usual entry: key (field 1) then value (field 2) and nothing else, short lengths
      if (es + 2 <= ee && es[0] == 0x0A && es[1] < 0x80 && size_t(es[1]) + 2 <= size_t(ee - es)) {
        const uint8_t* k1 = es + 2 + es[1];
        if (k1 + 2 <= ee && k1[0] == 0x12 && k1[1] < 0x80 && size_t(k1[1]) == size_t(ee - k1 - 2)) {
          key = std::string_view(reinterpret_cast<const char*>(es + 2), size_t(es[1]));
          has_key = true;
          vs = k1 + 2;
          ve = ee;
        }
      }
      if (!has_key) {
        fields(es, ee, [&](uint32_t kn, uint32_t kw, const uint8_t* a, const uint8_t* b, uint64_t) {
          if (kn == 1 && kw == 2) {
            key = std::string_view(reinterpret_cast<const char*>(a), size_t(b - a));
            has_key = true;
          } else if (kn == 2 && kw == 2) {
            vs = a;
            ve = b;
          }
        });
      }
      if (!has_key) throw ProtoError{"feature map entry without a key"};
      f(key, vs, ve);
    });
  });
}

// Calls f(double) for each value of a FloatList (num 2) or Int64List (num 3) message [a, b).
template <typename F>
static inline void numeric_values(uint32_t list, const uint8_t* a, const uint8_t* b, F&& f) {
  if (list == 2) {  // FloatList
    fields(a, b, [&](uint32_t n, uint32_t w, const uint8_t* x, const uint8_t* y, uint64_t) {
      if (n != 1) return;
      if (w == 2) {
        if ((y - x) % 4) throw ProtoError{"packed float list length not a multiple of 4"};
        for (const uint8_t* q = x; q < y; q += 4) {
          float v;
          std::memcpy(&v, q, 4);
          f(double(v));
        }
      } else if (w == 5) {
        float v;
        std::memcpy(&v, x, 4);
        f(double(v));
      } else {
        throw ProtoError{"float value with a wrong wire type"};
      }
    });
  } else {  // Int64List
    fields(a, b, [&](uint32_t n, uint32_t w, const uint8_t* x, const uint8_t* y, uint64_t v) {
      if (n != 1) return;
      if (w == 2) {
        const uint8_t* q = x;
        while (q < y) f(double(int64_t(varint(q, y))));
      } else if (w == 0) {
        f(double(int64_t(v)));
      } else {
        throw ProtoError{"int64 value with a wrong wire type"};
      }
    });
  }
}

}  // namespace wire
}  // namespace ncs
