// The Python module, named after the binary (PyInit_<binary name>, given by the build as LP_MODULE_NAME): builds of
// several capabilities or versions load side by side in one process, and as this file is all that depends on the
// name, a change to another file recompiles only that file and this one. Built for the baseline instruction set.
#include <pybind11/pybind11.h>

namespace lp {
void define_module(pybind11::module_& m);  // bindings.cpp
}  // namespace lp

#ifndef LP_MODULE_NAME
#error "the build names the module: -DLP_MODULE_NAME=<binary name>"
#endif

PYBIND11_MODULE(LP_MODULE_NAME, m) { lp::define_module(m); }
