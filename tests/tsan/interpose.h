// Helpers for the TSan shims of tests/tsan/ (absl_sync_annotations.cc,
// grpc_sync_annotations.cc): an executable's definition of a function that a
// shared library exports takes precedence over the library's, so a shim can
// define it, tell TSan what happens, and call the library's own definition.
#ifndef TESSERA_TESTS_TSAN_INTERPOSE_H_
#define TESSERA_TESTS_TSAN_INTERPOSE_H_

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

namespace tessera::tsan {

// The next definition of `mangled` after the executable's (the shared
// library's). Aborts if there is none: a shim must not silently do nothing.
template <typename Fn>
Fn Real(const char* mangled) {
  void* p = dlsym(RTLD_NEXT, mangled);
  if (p == nullptr) {
    std::fprintf(stderr, "tsan shim: %s not found\n", mangled);
    std::abort();
  }
  return reinterpret_cast<Fn>(p);
}

}  // namespace tessera::tsan

// Declares `real`, the library's definition, looked up once.
#define TESSERA_REAL(type, mangled) static const auto real = ::tessera::tsan::Real<type>(mangled);

#endif  // TESSERA_TESTS_TSAN_INTERPOSE_H_
