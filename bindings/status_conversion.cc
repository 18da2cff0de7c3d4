#include "bindings/status_conversion.h"

namespace omnirelay::bindings {

void ThrowIfError(const absl::Status& status) {
  if (status.ok()) return;
  namespace py = pybind11;
  const auto error_code = core::ErrorCode(status);
  py::object from_status = py::module_::import("omnirelay.errors").attr("from_status");
  py::object exception =
      from_status(static_cast<int>(status.code()), std::string(core::FromAbsl(status.message())),
                  error_code ? py::cast(*error_code) : py::none());
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exception.ptr())), exception.ptr());
  throw py::error_already_set();
}

}  // namespace omnirelay::bindings
