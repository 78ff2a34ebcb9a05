// Lets `import atss_ops._C` load the library built by setup.py; the schemas and
// CPU kernels register themselves (STABLE_TORCH_LIBRARY) when the shared object
// loads. Compiled against CPython's limited API (Py_LIMITED_API, set by the
// build), so one binary serves every Python >= 3.10 (the wheel's cp310-abi3
// tag). The CMake build produces a plain library for torch.ops.load_library.
//
// The module records the oldest torch whose stable ABI the library targets
// (`torch_target`, "2.10"), so that atss_ops can check it against the torch it
// runs with. The CUDA kernels live in a companion library named for its CUDA
// major version (atss_ops/_C_cuda<major>.abi3.so).
#include <Python.h>
#include <torch/csrc/stable/version.h>

#include <cstdio>

#ifndef TORCH_TARGET_VERSION
#error "TORCH_TARGET_VERSION (the torch whose stable ABI the library targets) must be defined"
#endif

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  char target[16];
  std::snprintf(target, sizeof(target), "%u.%u",
                static_cast<unsigned>((TORCH_TARGET_VERSION >> 56) & 0xff),
                static_cast<unsigned>((TORCH_TARGET_VERSION >> 48) & 0xff));
  if (PyModule_AddStringConstant(module, "torch_target", target) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
