// The instruction set a translation unit is built for, and what follows from it: the vector width and the number of
// vector registers (the register budget the tiles of tuning.h are sized for). The build defines one
// LP_CAPABILITY_<NAME> and passes the matching -m flags (lowrank_pool/_native/_build.py); every intrinsic of the
// kernel lives in vec.h, behind these constants (as ggml-cpu's simd-mappings.h and ATen's CPU_CAPABILITY builds).
#pragma once

#if defined(LP_CAPABILITY_AVX512)
#if !defined(__AVX512F__) || !defined(__AVX512VL__) || !defined(__AVX512DQ__) || !defined(__AVX512BW__) || \
    !defined(__FMA__)
#error "LP_CAPABILITY_AVX512 needs -mavx512f -mavx512vl -mavx512dq -mavx512bw -mfma"
#endif
#define LP_CAPABILITY_NAME "avx512"
#ifndef LP_VEC_BYTES
#define LP_VEC_BYTES 32
#endif
#define LP_VEC_REGS 32
#elif defined(LP_CAPABILITY_AVX2)
#if !defined(__AVX2__) || !defined(__FMA__)
#error "LP_CAPABILITY_AVX2 needs -mavx2 -mfma"
#endif
#define LP_CAPABILITY_NAME "avx2"
#ifndef LP_VEC_BYTES
#define LP_VEC_BYTES 32
#endif
#define LP_VEC_REGS 16
#elif defined(LP_CAPABILITY_BASELINE)
// the bindings and the CPU check: no vector code, nothing that needs more than the baseline of the architecture
#define LP_CAPABILITY_NAME "baseline"
#define LP_VEC_BYTES 16
#define LP_VEC_REGS 16
#else
#error "build with one of LP_CAPABILITY_AVX512, LP_CAPABILITY_AVX2, LP_CAPABILITY_BASELINE"
#endif

#if LP_VEC_BYTES != 16 && LP_VEC_BYTES != 32 && LP_VEC_BYTES != 64
#error "LP_VEC_BYTES: 16, 32 or 64"
#endif

namespace lp {
constexpr int kVecBytes = LP_VEC_BYTES;  // bytes of one vector register the kernel computes in
constexpr int kVecRegs = LP_VEC_REGS;    // vector registers the compiler may allocate
constexpr int kLineBytes = 64;           // a cache line (every x86-64 CPU this is built for)
}  // namespace lp
