/* fuzz_ops.h: runs a byte string as a sequence of pool operations and checks the
 * pool after every step. The one entry point of the libFuzzer target
 * (fuzz_target.c) and of the replay test that runs in every CI build
 * (fuzz_replay_test.cc), so the fuzz logic is exercised even without clang.
 *
 * The first bytes pick a configuration (host backend, or a simulated device with or
 * without stream ordering and stream-ordered segments; scaled-down segment sizes so
 * that splits, coalescing, limits and pressure happen often); each following op
 * allocates, frees (also across streams), misuses the API (double free, foreign and
 * interior pointers, zero and absurd sizes), trims, resets, completes simulated
 * work, releases streams or injects backend failures. After every op: the pool's own
 * invariant check, a shadow model of the live blocks (no overlap, alignment, byte
 * patterns intact), the stream-ordering rule (sim_check_use) and the counters. */
#ifndef DA_TESTS_MEMPOOL_FUZZ_OPS_H
#define DA_TESTS_MEMPOOL_FUZZ_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 0 when every check held; otherwise 1 with the first violation in why. */
int mp_fuzz_run(const uint8_t* data, size_t size, char* why, size_t why_len);

#ifdef __cplusplus
}
#endif

#endif /* DA_TESTS_MEMPOOL_FUZZ_OPS_H */
