// Python bindings of the `ncs data convert` natives; called from csrc/ops.cpp's module init.
// pybind11's types are hidden and NativeVocab is not: GCC's "declared with greater visibility
// than its base" warning for class_<NativeVocab>, harmless inside one extension module
#pragma GCC diagnostic ignored "-Wattributes"

#include "cpu/data_bind.h"

#include "cpu/tfrecord.h"
#include "cpu/vocab.h"

namespace ncs {

void bind_data(pybind11::module& m) {
  namespace py = pybind11;
  // ncs data convert: native TFRecord + tf.train.Example parser (csrc/cpu/tfrecord.cpp)
  // (both release the GIL, so a reader thread can inflate the next chunk meanwhile)
  m.def("tfrecord_parse_cpu", &tfrecord_parse_cpu, "parse the whole TFRecord records of a uint8 buffer",
        py::arg("buf"), py::arg("features"), py::arg("check_crc") = true, py::call_guard<py::gil_scoped_release>());
  m.def("crc32c_cpu", &crc32c_cpu, "CRC-32C of a uint8 tensor", py::arg("buf"), py::arg("software") = false);
  // ncs data convert: the vocabulary of a field (csrc/cpu/vocab.cpp)
  py::class_<NativeVocab>(m, "NativeVocab", "value -> id table: ids from 1 in first appearance order")
      .def(py::init<bool>(), py::arg("frozen"))
      .def("add_missing", &NativeVocab::add_missing, py::arg("key"))
      .def("add_fixed", &NativeVocab::add_fixed, py::arg("key"), py::arg("id"))
      .def("lookup_bytes", &NativeVocab::lookup_bytes, py::arg("offsets"), py::arg("data"),
           py::arg("valid") = py::none(), py::call_guard<py::gil_scoped_release>())
      .def("lookup_int64", &NativeVocab::lookup_int64, py::arg("values"), py::arg("valid") = py::none(),
           py::call_guard<py::gil_scoped_release>())
      .def("values", &NativeVocab::values)
      .def("__len__", &NativeVocab::size);

  // ncs data convert: TFRecord records straight to id columns through NativeVocab tables
  // (csrc/cpu/tfrecord_encode.cpp); the tables are only used during the call
  m.def("tfrecord_encode_cpu", &tfrecord_encode_cpu, "parse the whole TFRecord records of a uint8 buffer into ids",
        py::arg("buf"), py::arg("fields"), py::arg("widths"), py::arg("vocabs"), py::arg("labels"),
        py::arg("groups"), py::arg("group_defaults"), py::arg("check_crc") = true,
        py::call_guard<py::gil_scoped_release>());
}

}  // namespace ncs
