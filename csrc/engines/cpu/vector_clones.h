// TORCH_WS_VECTOR_CLONES marks the few hot loops that are plain arithmetic over contiguous rows:
// on x86-64 GCC then also emits an AVX2/FMA clone of the function, chosen at load time, while the
// portable (SSE2) build stays the fallback. Elsewhere it expands to nothing.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TORCH_WS_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define TORCH_WS_VECTOR_CLONES
#endif
