// Lets `import atss_ops._C` load the library built by setup.py; the ops
// register themselves through TORCH_LIBRARY when the shared object loads.
// (The CMake build produces a plain library for torch.ops.load_library.)
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
