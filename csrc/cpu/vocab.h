// A growing value -> id table for `ncs data convert` (csrc/cpu/vocab.cpp): ids from 1 in first
// appearance order, missing markers and nulls -> 0, or a fixed table (another run's vocabulary)
// where unknown values -> 0. Keys are byte strings; integers are keyed by their decimal text, the
// same text the pyarrow path makes, so both paths build the same vocabulary.
#pragma once

#include <torch/extension.h>

#include "cpu/bytes_hash.h"

#include <cstdint>
#include <string>
#include <vector>

namespace ncs {

class NativeVocab {
 public:
  explicit NativeVocab(bool frozen);
  // value -> 0 (a missing marker). Only for a growing table.
  void add_missing(const std::string& key);
  // value -> id (a fixed table).
  void add_fixed(const std::string& key, int64_t id);
  // ids (int32 [n]) of the n strings data[offsets[i]:offsets[i+1]]; valid (bool [n], optional):
  // false -> 0. offsets int32 or int64 [n + 1] (pyarrow's string / large_string layout).
  at::Tensor lookup_bytes(const at::Tensor& offsets, const at::Tensor& data, const c10::optional<at::Tensor>& valid);
  // ids (int32 [n]) of n int64 values, keyed by their decimal text.
  at::Tensor lookup_int64(const at::Tensor& values, const c10::optional<at::Tensor>& valid);
  // The values of ids 1..size() in id order: (offsets int64 [size + 1], data uint8).
  std::vector<at::Tensor> values() const;
  int64_t size() const { return int64_t(order_.size()); }
  // The id of the n bytes at p (added with the next id when new and the table grows; 0 when
  // unknown to a fixed table). For the native encoders (tfrecord_encode_cpu); no GIL needed.
  int32_t find_or_add(const uint8_t* p, size_t n) {  // inline: the encoders' hot path
    const uint64_t h = bytes::hash(p, n);
    const size_t mask = slots_.size() - 1;
    for (size_t i = size_t(h) & mask; slots_[i].len >= 0; i = (i + 1) & mask) {
      const Slot& s = slots_[i];
      if (s.hash == h && size_t(s.len) == n && bytes::equal(keys_.data() + s.off, p, n)) return s.id;
    }
    return frozen_ ? 0 : add_new(p, n);
  }
  int32_t find_or_add_int(int64_t v);

 private:
  int32_t add_new(const uint8_t* p, size_t n);
  struct Slot {
    uint64_t hash;
    int64_t off;  // the key: keys_[off:off + len]
    int32_t len;  // -1: empty
    int32_t id;
  };
  void insert(const uint8_t* p, size_t n, int32_t id, bool ordered);
  void grow();
  bool frozen_;
  std::vector<Slot> slots_;
  size_t used_ = 0;
  std::vector<int64_t> key_off_{0};  // key k = keys_[key_off_[k]:key_off_[k + 1]]
  std::vector<uint8_t> keys_;
  std::vector<int64_t> order_;  // key index of ids 1..n (the keys added in id order)
  // integers: a cache in front of the text table (value -> id of its decimal text), so that a
  // repeated id costs one probe of 16-byte slots instead of to_chars + a text hash + memcmp
  struct IntSlot {
    int64_t key;
    int32_t id;
    int32_t used;
  };
  std::vector<IntSlot> islots_;
  size_t iused_ = 0;
};

}  // namespace ncs
