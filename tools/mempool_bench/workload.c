#include "tools/mempool_bench/workload.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LAYERS 24
#define HIDDEN 1024
#define HEADS 16
#define BF16 2
#define KIB ((size_t)1024)
#define MIB (KIB * KIB)

typedef struct {
  uint64_t s;
} rng;

static uint64_t next(rng* r) { /* splitmix64 */
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Log-uniform in [lo, hi]: many more small buffers than large ones. */
static size_t log_uniform(rng* r, size_t lo, size_t hi) {
  double u = (double)(next(r) >> 11) / 9007199254740992.0;
  double x = (double)lo * pow((double)hi / (double)lo, u);
  return x < (double)lo ? lo : (size_t)x;
}

typedef struct {
  trace* t;
  size_t live;
  size_t* slot_bytes;   /* bytes of each slot's current allocation */
  uint32_t* free_slots; /* slots free for reuse */
  size_t num_free;
  int failed;
} builder;

static void push(builder* b, trace_op op) {
  trace* t = b->t;
  if (t->num_ops == t->cap_ops) {
    size_t cap = t->cap_ops ? 2 * t->cap_ops : 16384;
    trace_op* grown = realloc(t->ops, cap * sizeof *grown);
    if (grown == NULL) {
      b->failed = 1;
      return;
    }
    t->ops = grown;
    t->cap_ops = cap;
  }
  t->ops[t->num_ops++] = op;
}

static uint32_t alloc_op(builder* b, size_t bytes) {
  uint32_t slot = b->num_free ? b->free_slots[--b->num_free] : b->t->num_slots++;
  b->slot_bytes[slot] = bytes;
  push(b, (trace_op){OP_ALLOC, slot, bytes});
  b->t->allocations++;
  b->live += bytes;
  if (b->live > b->t->peak_live_bytes) b->t->peak_live_bytes = b->live;
  return slot;
}

static void free_op(builder* b, uint32_t slot, op_kind kind) {
  push(b, (trace_op){kind, slot, 0});
  b->live -= b->slot_bytes[slot];
  b->free_slots[b->num_free++] = slot;
}

/* Short-lived buffers: up to four outstanding, as kernels' workspaces are. */
static void temporaries(builder* b, rng* r, int count, size_t act) {
  uint32_t held[4];
  int n = 0;
  for (int i = 0; i < count; i++) {
    uint64_t kind = next(r) % 100;
    size_t bytes = kind < 60   ? log_uniform(r, 256, 64 * KIB)        /* indices, stats */
                   : kind < 90 ? log_uniform(r, 64 * KIB, 4 * MIB)    /* tiles, LSE */
                               : log_uniform(r, 4 * MIB, 2 * act);    /* GEMM/attention */
    if (n == 4) free_op(b, held[--n], OP_FREE);
    held[n++] = alloc_op(b, bytes);
    if (next(r) % 2) free_op(b, held[--n], OP_FREE);
  }
  while (n) free_op(b, held[--n], OP_FREE);
}

int trace_build(trace* t, uint64_t step) {
  static const uint32_t kTokens[] = {4096, 6144, 8192, 12288, 16384};
  memset(t, 0, sizeof *t);
  rng r = {0x5eed0000 + step};
  t->tokens = kTokens[next(&r) % 5];
  size_t act = (size_t)t->tokens * HIDDEN * BF16;
  enum { MAX_SLOTS = 1 << 16 }; /* far above the ~600 buffers live at once */
  builder b = {t, 0, malloc(MAX_SLOTS * sizeof(size_t)), malloc(MAX_SLOTS * sizeof(uint32_t)), 0, 0};
  if (b.slot_bytes == NULL || b.free_slots == NULL) b.failed = 1;

  uint32_t kept[LAYERS][16];
  int num_kept[LAYERS];
  for (int l = 0; l < LAYERS && !b.failed; l++) { /* forward */
    int k = 0;
    kept[l][k++] = alloc_op(&b, 3 * act);                            /* qkv */
    kept[l][k++] = alloc_op(&b, (size_t)t->tokens * HEADS * 4);      /* lse (f32) */
    kept[l][k++] = alloc_op(&b, act);                                /* attention out */
    kept[l][k++] = alloc_op(&b, act);                                /* mlp in */
    kept[l][k++] = alloc_op(&b, 4 * act);                            /* mlp hidden */
    kept[l][k++] = alloc_op(&b, 2 * (size_t)t->tokens * 4);          /* norm stats */
    while (k < 16) kept[l][k++] = alloc_op(&b, log_uniform(&r, 256, 64 * KIB)); /* masks */
    num_kept[l] = k;
    temporaries(&b, &r, 300, act);
  }
  uint32_t buckets[2] = {UINT32_MAX, UINT32_MAX};
  for (int l = LAYERS - 1; l >= 0 && !b.failed; l--) { /* backward */
    uint32_t grads[3];
    for (int g = 0; g < 3; g++) grads[g] = alloc_op(&b, act);
    temporaries(&b, &r, 100, act);
    for (int g = 2; g >= 0; g--) free_op(&b, grads[g], OP_FREE);
    for (int k = num_kept[l] - 1; k >= 0; k--) free_op(&b, kept[l][k], OP_FREE);
    if (l % 2 == 0) { /* a full 25 MiB bucket goes to all-reduce; two in flight */
      if (buckets[1] != UINT32_MAX) free_op(&b, buckets[1], OP_FREE_COMM);
      buckets[1] = buckets[0];
      buckets[0] = alloc_op(&b, 25 * MIB);
    }
  }
  for (int i = 0; i < 2 && !b.failed; i++)
    if (buckets[i] != UINT32_MAX) free_op(&b, buckets[i], OP_FREE_COMM);
  free(b.free_slots);
  free(b.slot_bytes);
  if (b.failed) trace_free(t);
  return b.failed;
}

void trace_free(trace* t) {
  free(t->ops);
  memset(t, 0, sizeof *t);
}
