// TFRecord records straight to id columns for `ncs data convert` (see tfrecord.h): one pass
// over the decompressed bytes, each value looked up in its field's NativeVocab where it lies in
// the buffer (no per-value copy, no intermediate columns, no Python per field).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string_view>
#include <unordered_map>

#include "cpu/tfrecord.h"
#include "cpu/tfrecord_wire.h"
#include "cpu/vocab.h"

namespace ncs {

using namespace wire;

namespace {

// A requested feature name and what it feeds: an id field, a label, a group key (a name can
// feed several, e.g. FEA_UID is a field and the user group).
struct Role {
  int field = -1, label = -1, group = -1;
};

// Feature name -> role slot: open addressing over the few requested names (the map keys of
// every record are looked up here: a record's keys come in no fixed order).
class NameTable {
 public:
  void add(std::string_view name, int role) {
    if (4 * (n_ + 1) > slots_.size()) {
      std::vector<std::pair<std::string_view, int>> old(std::max<size_t>(64, slots_.size() * 2), {{}, -1});
      old.swap(slots_);
      n_ = 0;
      for (auto& s : old)
        if (s.second >= 0) add(s.first, s.second);
    }
    size_t i = slot(name);
    if (slots_[i].second < 0) ++n_;
    slots_[i] = {name, role};
  }
  int find(std::string_view key) const {
    const size_t i = slot(key);
    return slots_[i].second;
  }

 private:
  size_t slot(std::string_view k) const {
    const auto* p = reinterpret_cast<const uint8_t*>(k.data());
    const size_t mask = slots_.size() - 1;
    size_t i = size_t(bytes::hash(p, k.size())) & mask;
    while (slots_[i].second >= 0 &&
           !(slots_[i].first.size() == k.size() &&
             bytes::equal(reinterpret_cast<const uint8_t*>(slots_[i].first.data()), p, k.size())))
      i = (i + 1) & mask;
    return i;
  }
  std::vector<std::pair<std::string_view, int>> slots_ = std::vector<std::pair<std::string_view, int>>(64, {{}, -1});
  size_t n_ = 0;
};

// NCS_TFRECORD_PROFILE=1: the encoder's phases on stderr, per call (for docs/DATA.md's
// breakdown; the clock reads cost ~2 % then, nothing otherwise).
bool profiling() {
  static const bool on = [] {
    const char* v = std::getenv("NCS_TFRECORD_PROFILE");
    return v != nullptr && v[0] != '\0' && v[0] != '0';
  }();
  return on;
}

// The previous record's value at one position of a field, and its id: consecutive records of
// a request repeat their user and context values, so most lookups are one memcmp, not a hash
// probe. (A table never changes the id of a key it holds, so the cached id stays right.)
struct Prev {
  const uint8_t* p = nullptr;
  size_t n = 0;
  int32_t id = 0;
};
constexpr int64_t kPrev = 8;  // positions cached per field

inline int32_t lookup(NativeVocab& v, Prev* pv, const uint8_t* x, size_t n) {
  if (pv != nullptr) {
    if (pv->p != nullptr && pv->n == n && std::memcmp(pv->p, x, n) == 0) return pv->id;
    const int32_t id = v.find_or_add(x, n);
    *pv = Prev{x, n, id};
    return id;
  }
  return v.find_or_add(x, n);
}

using Clock = std::chrono::steady_clock;

double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

std::vector<at::Tensor> tfrecord_encode_cpu(const at::Tensor& buf, const std::vector<std::string>& fields_in,
                                            const std::vector<int64_t>& widths,
                                            const std::vector<NativeVocab*>& vocabs,
                                            const std::vector<std::string>& labels,
                                            const std::vector<std::string>& groups,
                                            const std::vector<std::string>& group_defaults, bool check_crc) {
  TORCH_CHECK(buf.dtype() == at::kByte && buf.dim() == 1 && buf.is_contiguous() && !buf.is_cuda(),
              "tfrecord_encode_cpu: expected a contiguous 1-D uint8 CPU tensor");
  TORCH_CHECK(widths.size() == fields_in.size() && vocabs.size() == fields_in.size(),
              "tfrecord_encode_cpu: fields, widths and vocabs must have the same length");
  TORCH_CHECK(group_defaults.size() == groups.size(), "tfrecord_encode_cpu: one default per group");
  for (size_t i = 0; i < widths.size(); ++i) {
    TORCH_CHECK(widths[i] >= 1, "tfrecord_encode_cpu: widths must be >= 1");
    TORCH_CHECK(vocabs[i] != nullptr, "tfrecord_encode_cpu: vocabs must not be None");
  }
  const bool prof = profiling();
  const auto t0 = Clock::now();
  double t_crc = 0, t_ids = 0;
  const uint8_t* base = buf.data_ptr<uint8_t>();
  const size_t size = size_t(buf.numel());

  // name -> slot of `roles`
  std::vector<Role> roles;
  std::unordered_map<std::string_view, int> index;
  auto role_of = [&](const std::string& name) -> Role& {
    auto it = index.find(std::string_view(name));
    if (it != index.end()) return roles[size_t(it->second)];
    index.emplace(std::string_view(name), int(roles.size()));
    roles.emplace_back();
    return roles.back();
  };
  for (size_t i = 0; i < fields_in.size(); ++i) role_of(fields_in[i]).field = int(i);
  for (size_t i = 0; i < labels.size(); ++i) role_of(labels[i]).label = int(i);
  for (size_t i = 0; i < groups.size(); ++i) role_of(groups[i]).group = int(i);
  const size_t nroles = roles.size();
  NameTable names;
  for (const auto& kv : index) names.add(kv.first, kv.second);

  std::vector<std::vector<int32_t>> ids(fields_in.size());
  std::vector<std::vector<double>> nums(labels.size());
  std::vector<std::vector<int32_t>> gidx(groups.size());
  std::vector<NativeVocab> gvocab;  // per group: the call's distinct first values (ids from 1)
  gvocab.reserve(groups.size());
  for (size_t i = 0; i < groups.size(); ++i) gvocab.emplace_back(false);
  std::vector<Prev> prev(fields_in.size() * size_t(kPrev)), gprev(groups.size());

  // per record: the Feature message of each role (the last map entry of a name wins, as in protobuf)
  std::vector<const uint8_t*> fs(nroles), fe(nroles);
  const double nan = std::numeric_limits<double>::quiet_NaN();

  size_t pos = 0;
  int64_t rec = 0;
  const uint8_t* payload = nullptr;
  uint64_t length = 0;
  auto now = [prof] { return prof ? Clock::now() : Clock::time_point(); };  // no clock reads unless profiling
  for (auto c0 = now(); next_record(base, pos, size, check_crc, rec, payload, length); c0 = now()) {
    if (prof) t_crc += secs(c0, Clock::now());
    std::fill(fs.begin(), fs.end(), nullptr);
    try {
      example_entries(payload, payload + length, [&](std::string_view key, const uint8_t* vs, const uint8_t* ve) {
        const int r = names.find(key);
        if (r < 0 || vs == nullptr) return;
        fs[size_t(r)] = vs;
        fe[size_t(r)] = ve;
      });
      const auto c1 = prof ? Clock::now() : Clock::time_point();
      for (size_t i = 0; i < ids.size(); ++i) ids[i].resize(ids[i].size() + size_t(widths[i]), -1);
      for (auto& v : nums) v.push_back(nan);
      for (size_t r = 0; r < nroles; ++r) {
        const Role& ro = roles[r];
        int32_t* out = ro.field >= 0 ? ids[size_t(ro.field)].data() + size_t(rec) * size_t(widths[size_t(ro.field)])
                                     : nullptr;
        const int64_t width = ro.field >= 0 ? widths[size_t(ro.field)] : 0;
        int64_t count = 0;
        const uint8_t* g0 = nullptr;  // the first bytes value (groups)
        const uint8_t* g1 = nullptr;
        if (fs[r] != nullptr) {
          fields(fs[r], fe[r], [&](uint32_t num, uint32_t wire, const uint8_t* a, const uint8_t* b, uint64_t) {
            if (wire != 2 || num < 1 || num > 3) return;
            if (num == 1) {  // BytesList
              fields(a, b, [&](uint32_t n, uint32_t w, const uint8_t* x, const uint8_t* y, uint64_t) {
                if (n != 1 || w != 2) return;
                if (count == 0) {
                  g0 = x;
                  g1 = y;
                }
                if (out != nullptr) {
                  // every value enters the vocabulary; those past the width are dropped
                  Prev* pv = count < kPrev ? &prev[size_t(ro.field) * size_t(kPrev) + size_t(count)] : nullptr;
                  const int32_t id = lookup(*vocabs[size_t(ro.field)], pv, x, size_t(y - x));
                  if (count < width) out[count] = id;
                }
                ++count;
              });
              return;
            }
            if (ro.field >= 0) throw ProtoError{"a feature field holds numbers, not a BytesList"};
            double* fp = ro.label >= 0 ? &nums[size_t(ro.label)][size_t(rec)] : nullptr;
            numeric_values(num, a, b, [&](double v) {
              if (count++ == 0 && fp) *fp = v;
            });
          });
        }
        if (out != nullptr && count == 0) out[0] = 0;  // no value: id 0 (missing)
        if (ro.group >= 0) {
          const std::string& d = group_defaults[size_t(ro.group)];
          Prev* pv = &gprev[size_t(ro.group)];
          const int32_t g = g0 != nullptr ? lookup(gvocab[size_t(ro.group)], pv, g0, size_t(g1 - g0))
                                          : lookup(gvocab[size_t(ro.group)], pv,
                                                   reinterpret_cast<const uint8_t*>(d.data()), d.size());
          gidx[size_t(ro.group)].push_back(g - 1);
        }
      }
      if (prof) t_ids += secs(c1, Clock::now());
    } catch (const ProtoError& e) {
      record_error(rec, std::string("malformed tf.train.Example: ") + e.what);
    }
    pos += 12 + size_t(length) + 4;
    ++rec;
  }
  const auto t1 = Clock::now();
  std::vector<at::Tensor> out;
  auto i64 = at::TensorOptions().dtype(at::kLong);
  out.push_back(at::full({1}, int64_t(pos), i64));
  out.push_back(at::full({1}, rec, i64));
  for (size_t i = 0; i < ids.size(); ++i) {
    auto t = widths[i] == 1 ? at::empty({rec}, at::TensorOptions().dtype(at::kInt))
                            : at::empty({rec, widths[i]}, at::TensorOptions().dtype(at::kInt));
    if (!ids[i].empty()) std::memcpy(t.data_ptr<int32_t>(), ids[i].data(), ids[i].size() * sizeof(int32_t));
    out.push_back(t);
  }
  for (auto& v : nums) {
    auto t = at::empty({rec}, at::TensorOptions().dtype(at::kDouble));
    if (!v.empty()) std::memcpy(t.data_ptr<double>(), v.data(), v.size() * sizeof(double));
    out.push_back(t);
  }
  for (size_t g = 0; g < groups.size(); ++g) {
    auto t = at::empty({rec}, at::TensorOptions().dtype(at::kInt));
    if (!gidx[g].empty()) std::memcpy(t.data_ptr<int32_t>(), gidx[g].data(), gidx[g].size() * sizeof(int32_t));
    out.push_back(t);
    auto vals = gvocab[g].values();
    out.push_back(vals[0]);
    out.push_back(vals[1]);
  }
  if (prof) {
    std::fprintf(stderr, "tfrecord_encode_cpu: %lld records, %.1f MB: total %.3f s = crc %.3f + ids/labels %.3f + "
                 "framing/map %.3f, outputs %.3f s\n", (long long)rec, double(pos) / 1e6, secs(t0, Clock::now()),
                 t_crc, t_ids, secs(t0, t1) - t_crc - t_ids, secs(t1, Clock::now()));
  }
  return out;
}

}  // namespace ncs
