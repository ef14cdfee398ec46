/* sim_backend.h: a simulated device for the pool's CPU tests and fuzzer.
 *
 * Segments are real host memory (so tests can write through pointers), capped at a
 * simulated capacity. Streams are the handles (void*)0 .. (void*)(SIM_MAX_STREAMS-1);
 * each has a count of submitted work and of completed work, and nothing completes
 * until the test says so (sim_complete). Events record a stream's submitted count
 * and are complete once the stream's completed count reaches it.
 *
 * The simulator also checks the one rule the pool's stream ordering exists for: a
 * block freed on stream s (or a stream-ordered segment taken on s) may be handed to
 * another stream only once the work submitted on s up to that point has completed.
 * Tests report every free (sim_note_free) and check every allocation
 * (sim_check_use). Cross-stream frees make the freeing stream wait for the
 * allocating one, as the pool's contract requires; the simulator tracks those waits
 * (which work each stream is ordered after) like vector clocks. */
#ifndef DA_TESTS_MEMPOOL_SIM_BACKEND_H
#define DA_TESTS_MEMPOOL_SIM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "mempool/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SIM_MAX_STREAMS 8

typedef struct {
  int stream_ordered;          /* 0: behaves like host memory (streams ignored) */
  int segments_stream_ordered; /* 1: like cudaMallocAsync */
  size_t capacity_bytes;       /* simulated device memory */
} sim_options;

/* A new simulated backend; NULL if host memory ran out. Hand it to
 * da_mempool_create_with_backend, which owns it from then on. */
da_mp_backend* sim_backend_create(const sim_options* options);

static inline void* sim_stream(int k) { return (void*)(uintptr_t)k; }

/* Marks all work submitted so far on stream k complete (k < 0: on every stream). */
void sim_complete(da_mp_backend* be, int k);
/* Simulated memory used outside the pool (cudaMemGetInfo's free shrinks). */
void sim_set_external_use(da_mp_backend* be, size_t bytes);
/* The next n segment allocations fail with DA_STATUS_OUT_OF_MEMORY. */
void sim_fail_next_allocs(da_mp_backend* be, int n);
/* Bytes and count of segments the backend has handed out and not taken back. */
size_t sim_segment_bytes(const da_mp_backend* be);
size_t sim_segments(const da_mp_backend* be);
/* Events created and not destroyed. */
size_t sim_live_events(const da_mp_backend* be);

/* The caller is about to free [ptr, ptr+bytes), allocated on alloc_stream and used
 * there, on free_stream: work using it was submitted there (call this before
 * da_mempool_free, which may record a fence). A free on another stream models the
 * documented rule: free_stream first waited for alloc_stream's work. */
void sim_note_free(da_mp_backend* be, void* ptr, size_t bytes, void* alloc_stream,
                   void* free_stream);
/* NULL if using [ptr, ptr+bytes) on `stream` now is safe, else a sentence saying
 * which stream's unfinished work still owns it. */
const char* sim_check_use(da_mp_backend* be, void* ptr, size_t bytes, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* DA_TESTS_MEMPOOL_SIM_BACKEND_H */
