// The Python bindings of the `ncs data convert` natives (TFRecord parser, CRC-32C, NativeVocab),
// kept out of csrc/ops.cpp so that changing them recompiles only csrc/cpu/data_bind.cpp.
#pragma once

#include <torch/extension.h>

namespace ncs {

void bind_data(pybind11::module& m);

}  // namespace ncs
