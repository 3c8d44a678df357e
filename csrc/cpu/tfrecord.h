// Native TFRecord framing + tf.train.Example decoding for `ncs data convert` (csrc/cpu/tfrecord.cpp).
#pragma once

#include <torch/extension.h>

#include <string>
#include <vector>

namespace ncs {

// Parse every whole record of `buf` (uint8, the decompressed TFRecord stream from some record
// boundary on). Both CRC-32C checks of every record (length header, payload) are made when
// check_crc. Returns
//   [consumed bytes (int64 [1]), records (int64 [1]),
//    then for each name of `features`: counts int32 [records] (values of the feature per record),
//    offsets int64 [values + 1] and data uint8 [bytes] (BytesList values, concatenated),
//    num float64 [records] (first FloatList / Int64List value, NaN when none)].
// A partial last record is left unconsumed. A bad CRC or a malformed Example throws
// std::invalid_argument("record K: ...") with K counted from 0 at the start of `buf`.
std::vector<at::Tensor> tfrecord_parse_cpu(const at::Tensor& buf, const std::vector<std::string>& features,
                                           bool check_crc);

class NativeVocab;

// Parse every whole record of `buf` (as tfrecord_parse_cpu, CRCs checked when check_crc) straight
// into id columns (csrc/cpu/tfrecord_encode.cpp): the BytesList values of feature fields[i] are
// looked up in vocabs[i] (growing or fixed), in record order, every value, also those past
// widths[i]. Returns
//   [consumed bytes (int64 [1]), records (int64 [1]),
//    per field: ids int32 [records] (widths[i] == 1) or [records, widths[i]]: the first widths[i]
//        ids, -1 padded; a record without a value gets [0, -1, ...],
//    per label: float64 [records], its first FloatList / Int64List value, NaN when none,
//    per group: index int32 [records] into its values, offsets int64 [d + 1], data uint8: the d
//        distinct first BytesList values of the group's feature (group_defaults[g] when none)].
// A name may be a field, a label and a group at once. A field holding numbers is an error.
std::vector<at::Tensor> tfrecord_encode_cpu(const at::Tensor& buf, const std::vector<std::string>& fields,
                                            const std::vector<int64_t>& widths,
                                            const std::vector<NativeVocab*>& vocabs,
                                            const std::vector<std::string>& labels,
                                            const std::vector<std::string>& groups,
                                            const std::vector<std::string>& group_defaults, bool check_crc);

// CRC-32C (Castagnoli) of a uint8 tensor, for tests of the native implementation: the one the
// parser uses (the SSE4.2 instruction where the CPU has it), or the portable table (software).
int64_t crc32c_cpu(const at::Tensor& buf, bool software = false);

}  // namespace ncs
