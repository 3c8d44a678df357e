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

// CRC-32C (Castagnoli) of a uint8 tensor, for tests of the native implementation: the one the
// parser uses (the SSE4.2 instruction where the CPU has it), or the portable table (software).
int64_t crc32c_cpu(const at::Tensor& buf, bool software = false);

}  // namespace ncs
