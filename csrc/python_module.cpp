// The only file that includes Python.h: an empty module `torch_ws._C` whose import loads this
// shared library, and with it the TORCH_LIBRARY registrations of the other files.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
