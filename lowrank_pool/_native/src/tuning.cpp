// The tuning every call reads, and what the kernel's translation units were built with.
#include "kernel.h"

namespace lp {
namespace {
Tuning& current() {
  static Tuning* t = new Tuning;  // never destroyed (read by kernels that may outlive static destructors)
  return *t;
}
}  // namespace

const Tuning& tuning() { return current(); }
void set_tuning(const Tuning& t) { current() = t; }

const char* built_capability() { return LP_CAPABILITY_NAME; }
int built_vector_bytes() { return kVecBytes; }

}  // namespace lp
