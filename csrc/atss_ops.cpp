// The library atss_ops: every schema (schemas.h). Kernels register themselves
// from csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu.
#include "schemas.h"

STABLE_TORCH_LIBRARY(atss_ops, m) {
  atss::define_schemas(m);
}
