// NativeVocab: an open-addressing hash table (linear probing, load <= 1/2) over byte-string keys
// kept in one arena; see vocab.h. Its ids are those of ncs.data's pyarrow LocalVocab.
#include "cpu/vocab.h"

#include <charconv>
#include <cstring>
#include <stdexcept>

namespace ncs {

namespace {

inline uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  return h ^ (h >> 33);
}

// Tables from this many slots on (>= 1 MB: past the L2 cache) have their next slots prefetched;
// smaller ones hit the cache anyway, and the extra hash would cost more than it saves.
constexpr size_t kPrefetchSlots = size_t(1) << 16;

// The validity mask of n values (nullptr: all valid), checked.
const bool* valid_ptr(const c10::optional<at::Tensor>& valid, int64_t n, const char* fn) {
  if (!valid.has_value()) return nullptr;
  TORCH_CHECK(valid->numel() == n && valid->scalar_type() == at::kBool && valid->is_contiguous(), fn,
              ": valid must be a contiguous bool tensor of n entries");
  return valid->data_ptr<bool>();
}

}  // namespace

// 16 text slots to start: the tables of small fields stay within a few cache lines (the encoders
// probe 20 or so tables per record)
NativeVocab::NativeVocab(bool frozen) : frozen_(frozen), slots_(16, Slot{0, 0, -1, 0}) {}

void NativeVocab::grow() {
  std::vector<Slot> old(slots_.size() * 2, Slot{0, 0, -1, 0});
  old.swap(slots_);
  const size_t mask = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.len < 0) continue;
    size_t i = size_t(s.hash) & mask;
    while (slots_[i].len >= 0) i = (i + 1) & mask;
    slots_[i] = s;
  }
}

void NativeVocab::insert(const uint8_t* p, size_t n, int32_t id, bool ordered) {
  if (2 * (used_ + 1) > slots_.size()) grow();
  const uint64_t h = bytes::hash(p, n);
  const size_t mask = slots_.size() - 1;
  size_t i = size_t(h) & mask;
  while (slots_[i].len >= 0) {
    const Slot& s = slots_[i];
    if (s.hash == h && size_t(s.len) == n && bytes::equal(keys_.data() + s.off, p, n)) {
      slots_[i].id = id;  // the last assignment wins
      return;
    }
    i = (i + 1) & mask;
  }
  if (n > size_t(INT32_MAX)) throw std::length_error("NativeVocab: a value longer than 2 GiB");
  const int64_t k = int64_t(key_off_.size()) - 1;
  const int64_t off = int64_t(keys_.size());
  keys_.insert(keys_.end(), p, p + n);
  key_off_.push_back(int64_t(keys_.size()));
  slots_[i] = Slot{h, off, int32_t(n), id};
  ++used_;
  if (ordered) order_.push_back(k);
}

int32_t NativeVocab::add_new(const uint8_t* p, size_t n) {  // find_or_add of a key not in the table
  if (order_.size() >= size_t(INT32_MAX - 1)) throw std::overflow_error("vocabulary larger than int32 ids");
  const int32_t id = int32_t(order_.size()) + 1;
  insert(p, n, id, true);
  return id;
}

int32_t NativeVocab::find_or_add_int(int64_t v) {
  if (islots_.empty()) islots_.assign(1024, IntSlot{0, 0, 0});
  size_t mask = islots_.size() - 1;
  const uint64_t h = mix(uint64_t(v) ^ 0x9E3779B97F4A7C15ULL);
  size_t i = size_t(h) & mask;
  while (islots_[i].used) {
    if (islots_[i].key == v) return islots_[i].id;
    i = (i + 1) & mask;
  }
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  const int32_t id = find_or_add(reinterpret_cast<const uint8_t*>(buf), size_t(r.ptr - buf));
  if (2 * (iused_ + 1) > islots_.size()) {  // grow, then find the free slot again
    std::vector<IntSlot> old(islots_.size() * 2, IntSlot{0, 0, 0});
    old.swap(islots_);
    mask = islots_.size() - 1;
    for (const IntSlot& s : old) {
      if (!s.used) continue;
      size_t j = size_t(mix(uint64_t(s.key) ^ 0x9E3779B97F4A7C15ULL)) & mask;
      while (islots_[j].used) j = (j + 1) & mask;
      islots_[j] = s;
    }
    i = size_t(h) & mask;
    while (islots_[i].used) i = (i + 1) & mask;
  }
  islots_[i] = IntSlot{v, id, 1};
  ++iused_;
  return id;
}

void NativeVocab::add_missing(const std::string& key) {
  TORCH_CHECK(!frozen_, "NativeVocab.add_missing: a fixed vocabulary has no missing markers");
  islots_.clear();  // the integer cache may hold the old id
  iused_ = 0;
  insert(reinterpret_cast<const uint8_t*>(key.data()), key.size(), 0, false);
}

void NativeVocab::add_fixed(const std::string& key, int64_t id) {
  TORCH_CHECK(frozen_, "NativeVocab.add_fixed: only a fixed vocabulary takes given ids");
  TORCH_CHECK(id >= 0 && id < INT32_MAX, "NativeVocab.add_fixed: id out of the int32 range");
  islots_.clear();
  iused_ = 0;
  insert(reinterpret_cast<const uint8_t*>(key.data()), key.size(), int32_t(id), false);
}

at::Tensor NativeVocab::lookup_bytes(const at::Tensor& offsets, const at::Tensor& data,
                                     const c10::optional<at::Tensor>& valid) {
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1 && offsets.is_contiguous() &&
                  (offsets.scalar_type() == at::kInt || offsets.scalar_type() == at::kLong),
              "NativeVocab.lookup_bytes: offsets must be a contiguous 1-D int32/int64 tensor of n + 1 entries");
  TORCH_CHECK(data.dim() == 1 && data.is_contiguous() && data.scalar_type() == at::kByte,
              "NativeVocab.lookup_bytes: data must be a contiguous 1-D uint8 tensor");
  const int64_t n = offsets.numel() - 1;
  const bool* ok = valid_ptr(valid, n, "NativeVocab.lookup_bytes");
  auto out = at::empty({n}, at::TensorOptions().dtype(at::kInt));
  int32_t* ids = out.data_ptr<int32_t>();
  const uint8_t* d = data.data_ptr<uint8_t>();
  const int64_t size = data.numel();
  constexpr int64_t kPrefetch = 8;
  auto run = [&](auto* off) {
    for (int64_t i = 0; i < n; ++i) {
      if (ok && !ok[i]) {
        ids[i] = 0;
        continue;
      }
      const int64_t a = int64_t(off[i]), b = int64_t(off[i + 1]);
      TORCH_CHECK(0 <= a && a <= b && b <= size, "NativeVocab.lookup_bytes: offsets out of range at ", i);
      if (i + kPrefetch < n && slots_.size() >= kPrefetchSlots) {  // (a hint, as in lookup_int64)
        const int64_t pa = int64_t(off[i + kPrefetch]), pb = int64_t(off[i + kPrefetch + 1]);
        if (0 <= pa && pa <= pb && pb <= size)
          __builtin_prefetch(&slots_[size_t(bytes::hash(d + pa, size_t(pb - pa))) & (slots_.size() - 1)]);
      }
      ids[i] = find_or_add(d + a, size_t(b - a));
    }
  };
  if (offsets.scalar_type() == at::kInt)
    run(offsets.data_ptr<int32_t>());
  else
    run(offsets.data_ptr<int64_t>());
  return out;
}

at::Tensor NativeVocab::lookup_int64(const at::Tensor& values, const c10::optional<at::Tensor>& valid) {
  TORCH_CHECK(values.dim() == 1 && values.is_contiguous() && values.scalar_type() == at::kLong,
              "NativeVocab.lookup_int64: values must be a contiguous 1-D int64 tensor");
  const int64_t n = values.numel();
  const bool* ok = valid_ptr(valid, n, "NativeVocab.lookup_int64");
  auto out = at::empty({n}, at::TensorOptions().dtype(at::kInt));
  int32_t* ids = out.data_ptr<int32_t>();
  const int64_t* v = values.data_ptr<int64_t>();
  // the integer cache of a high-cardinality column is bigger than the caches: its slot for the
  // value kPrefetch ahead is requested while this one is looked up (a hint: the order, hence the
  // ids, is unchanged)
  constexpr int64_t kPrefetch = 8;
  for (int64_t i = 0; i < n; ++i) {
    if (i + kPrefetch < n && islots_.size() >= kPrefetchSlots)
      __builtin_prefetch(&islots_[size_t(mix(uint64_t(v[i + kPrefetch]) ^ 0x9E3779B97F4A7C15ULL)) &
                                  (islots_.size() - 1)]);
    ids[i] = (ok && !ok[i]) ? 0 : find_or_add_int(v[i]);
  }
  return out;
}

std::vector<at::Tensor> NativeVocab::values() const {
  const int64_t n = int64_t(order_.size());
  auto off = at::empty({n + 1}, at::TensorOptions().dtype(at::kLong));
  int64_t* o = off.data_ptr<int64_t>();
  int64_t total = 0;
  o[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const size_t k = size_t(order_[size_t(i)]);
    total += key_off_[k + 1] - key_off_[k];
    o[i + 1] = total;
  }
  auto data = at::empty({total}, at::TensorOptions().dtype(at::kByte));
  uint8_t* d = data.data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    const size_t k = size_t(order_[size_t(i)]);
    std::memcpy(d + o[i], keys_.data() + key_off_[k], size_t(key_off_[k + 1] - key_off_[k]));
  }
  return {off, data};
}

}  // namespace ncs
