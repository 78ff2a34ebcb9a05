// Lets `import atss_ops._C` load the library built by setup.py; the ops
// register themselves through TORCH_LIBRARY when the shared object loads.
// (The CMake build produces a plain library for torch.ops.load_library.)
//
// The module records the torch version it was compiled against, so that
// atss_ops can refuse a library built for another torch (whose ABI differs)
// and say to rebuild it.
#include <Python.h>
#include <torch/version.h>

#define ATSS_STRINGIFY_(x) #x
#define ATSS_STRINGIFY(x) ATSS_STRINGIFY_(x)

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  const char* built_with =
      ATSS_STRINGIFY(TORCH_VERSION_MAJOR) "." ATSS_STRINGIFY(TORCH_VERSION_MINOR);
  if (PyModule_AddStringConstant(module, "torch_version", built_with) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
