#include "tests/mempool/fuzz_ops.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/da_common.h"
#include "mempool/da_mempool.h"
#include "mempool/mempool_internal.h"
#include "tests/mempool/sim_backend.h"

#define MAX_LIVE 192
#define RECENT 8
#define STREAMS 4
#define PATTERN_BYTES 16

typedef struct {
  uint8_t* ptr;
  size_t bytes;
  int stream;
  uint8_t seed;
} live_block;

typedef struct {
  const uint8_t* data;
  size_t size, pos;
  da_mempool* pool;
  da_mp_backend* sim; /* NULL for the real host backend */
  int stream_ordered;
  da_mempool_config config;
  size_t unit; /* sizes scale with it: 1 MiB is the default configuration */
  live_block live[MAX_LIVE];
  size_t num_live;
  size_t requested_total;
  uint8_t* recent[RECENT]; /* freed pointers, for double frees */
  int num_recent;
  uint8_t next_seed;
  char* why;
  size_t why_len;
  int failed;
} fuzz_state;

/* MP_FUZZ_TRACE=1 in the environment prints every operation (to debug an input). */
static int tracing(void) {
  static int on = -1;
  if (on < 0) on = getenv("MP_FUZZ_TRACE") != NULL;
  return on;
}

#define TRACE(...) \
  do {                                   \
    if (tracing()) fprintf(stderr, __VA_ARGS__); \
  } while (0)

static uint8_t next_byte(fuzz_state* f) { return f->pos < f->size ? f->data[f->pos++] : 0; }

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void fail(fuzz_state* f, const char* fmt, ...) {
  if (f->failed) return;
  f->failed = 1;
  int n = snprintf(f->why, f->why_len, "op at byte %zu: ", f->pos);
  va_list ap;
  va_start(ap, fmt);
  if (n >= 0 && (size_t)n < f->why_len) vsnprintf(f->why + n, f->why_len - (size_t)n, fmt, ap);
  va_end(ap);
}

/* fail() and leave the calling function. */
#define FAIL(...)        \
  do {                   \
    fail(f, __VA_ARGS__); \
    return;              \
  } while (0)

static void expect_status(fuzz_state* f, da_status got, da_status want, const char* what) {
  if (got != want)
    fail(f, "%s returned %s, expected %s (%s)", what, da_status_string(got),
         da_status_string(want), da_last_error());
  else if (want != DA_STATUS_SUCCESS && da_last_error()[0] == '\0')
    fail(f, "%s failed without a sentence", what);
}

static void configure(fuzz_state* f) {
  uint8_t b0 = next_byte(f), b1 = next_byte(f);
  int mode = b0 & 3; /* 0 host, 1 sim without streams, 2 sim streams, 3 sim async-like */
  da_mempool_config c = da_mempool_config_default();
  c.track_fragmentation = (b0 >> 2) & 1;
  c.profiling = (b0 >> 3) & 1;
  c.alignment_bytes = (size_t)16 << (b1 % 9);
  int scale = (b1 >> 4) & 3;
  f->unit = scale == 0 ? ((size_t)1 << 20) : ((size_t)32 << 10) << scale;
  if (scale != 0) { /* the default shape, scaled down: more splits per byte */
    c.small_request_max_bytes = f->unit;
    c.small_segment_bytes = 2 * f->unit;
    c.large_rounding_bytes = 2 * f->unit;
    for (int i = 0; i < c.num_size_classes; i++)
      c.size_classes_bytes[i] = c.size_classes_bytes[i] / ((size_t)1 << 20) * f->unit +
                                (i == 0 ? f->unit / 10 : i == 1 ? f->unit / 2 : 0);
  }
  switch ((b0 >> 4) & 3) {
    case 1: c.max_cached_bytes = 4 * f->unit; break;
    case 2: c.max_reserved_bytes = 32 * f->unit; break;
    case 3:
      c.max_cached_bytes = 2 * f->unit;
      c.max_reserved_bytes = 48 * f->unit;
      c.cleanup_threshold = 0.0;
      break;
    default: break;
  }
  static const double pressure[] = {0.0, 0.05, 0.5, 0.9};
  c.pressure_free_fraction = pressure[(b0 >> 6) & 3];
  f->config = c;

  da_status st;
  if (mode == 0) {
    c.backend = DA_MEMPOOL_BACKEND_HOST;
    if (c.max_reserved_bytes == SIZE_MAX) c.max_reserved_bytes = 256 * f->unit;
    f->config = c;
    st = da_mempool_create(&c, &f->pool);
  } else {
    sim_options o = {mode >= 2, mode == 3, 256 * f->unit};
    f->sim = sim_backend_create(&o);
    if (f->sim == NULL) abort();
    f->stream_ordered = mode >= 2;
    st = da_mempool_create_with_backend(&c, f->sim, &f->pool);
  }
  if (st != DA_STATUS_SUCCESS) fail(f, "create failed: %s", da_last_error());
}

static size_t pick_size(fuzz_state* f) {
  uint8_t a = next_byte(f), b = next_byte(f);
  size_t v = ((size_t)(a & 31) << 8) | b; /* 13 bits */
  const da_mempool_config* c = &f->config;
  switch (a >> 5) {
    case 0:
    case 1: return 1 + v % 512;
    case 2:
    case 3: return 1 + v * 37 % c->small_request_max_bytes;
    case 4:
    case 5: return c->small_request_max_bytes + 1 + v * (f->unit / 256) % (16 * f->unit);
    case 6: return 1 + v * (f->unit / 64) % (64 * f->unit);
    default: {
      size_t edges[] = {c->small_request_max_bytes,     c->small_request_max_bytes + 1,
                        c->small_segment_bytes,         c->small_segment_bytes + 1,
                        c->large_rounding_bytes - 1,    c->alignment_bytes,
                        c->alignment_bytes + 1,         c->size_classes_bytes[v % 10],
                        c->size_classes_bytes[v % 10] - 1, 1};
      return edges[b % (sizeof edges / sizeof edges[0])];
    }
  }
}

/* The first and last PATTERN_BYTES bytes of a block (all of a short one) get bytes
 * derived from its seed and position. */
static uint8_t pattern_byte(const live_block* l, size_t i) {
  return (uint8_t)(l->seed * 31u + i * 7u + (i >> 8));
}

static size_t pattern_index(const live_block* l, size_t k) {
  return k < PATTERN_BYTES ? k : l->bytes - (2 * PATTERN_BYTES - k);
}

static size_t pattern_count(const live_block* l) {
  return l->bytes < 2 * PATTERN_BYTES ? l->bytes : 2 * PATTERN_BYTES;
}

static void write_pattern(const live_block* l) {
  for (size_t k = 0; k < pattern_count(l); k++) {
    size_t i = l->bytes < 2 * PATTERN_BYTES ? k : pattern_index(l, k);
    l->ptr[i] = pattern_byte(l, i);
  }
}

static int pattern_intact(const live_block* l) {
  for (size_t k = 0; k < pattern_count(l); k++) {
    size_t i = l->bytes < 2 * PATTERN_BYTES ? k : pattern_index(l, k);
    if (l->ptr[i] != pattern_byte(l, i)) return 0;
  }
  return 1;
}

static int is_live(const fuzz_state* f, const uint8_t* p) {
  for (size_t i = 0; i < f->num_live; i++)
    if (f->live[i].ptr == p) return 1;
  return 0;
}

static void do_free(fuzz_state* f, size_t i, int stream) {
  live_block l = f->live[i];
  if (!pattern_intact(&l)) {
    fail(f, "the bytes of block %p (%zu bytes) were overwritten: blocks overlap", (void*)l.ptr,
         l.bytes);
    return;
  }
  /* The work that used the block is submitted before the free, as in a program. */
  if (f->sim) sim_note_free(f->sim, l.ptr, l.bytes, sim_stream(l.stream), sim_stream(stream));
  da_status st = da_mempool_free(f->pool, l.ptr, sim_stream(stream));
  TRACE("free %p (%zu bytes, from stream %d) on stream %d\n", (void*)l.ptr, l.bytes, l.stream,
        stream);
  expect_status(f, st, DA_STATUS_SUCCESS, "free");
  if (st != DA_STATUS_SUCCESS) return;
  f->live[i] = f->live[--f->num_live];
  f->requested_total -= l.bytes;
  f->recent[f->num_recent++ % RECENT] = l.ptr;
}

static void do_allocate(fuzz_state* f) {
  size_t bytes = pick_size(f);
  int stream = next_byte(f) % STREAMS;
  if (f->num_live == MAX_LIVE) do_free(f, 0, f->live[0].stream);
  void* p = (void*)1;
  da_status st = da_mempool_allocate(f->pool, bytes, sim_stream(stream), &p);
  TRACE("allocate %zu on stream %d -> %p %s\n", bytes, stream, p, da_status_string(st));
  if (st == DA_STATUS_OUT_OF_MEMORY) { /* legitimate under the caps */
    if (p != NULL) fail(f, "failed allocate left *ptr = %p", p);
    return;
  }
  expect_status(f, st, DA_STATUS_SUCCESS, "allocate");
  if (st != DA_STATUS_SUCCESS) return;
  uint8_t* u = p;
  if ((uintptr_t)u % f->config.alignment_bytes)
    FAIL("%p is not aligned to %zu", p, f->config.alignment_bytes);
  for (size_t i = 0; i < f->num_live; i++) {
    const live_block* l = &f->live[i];
    if (u < l->ptr + l->bytes && l->ptr < u + bytes)
      FAIL("new block [%p, +%zu) overlaps live block [%p, +%zu)", p, bytes,
                  (void*)l->ptr, l->bytes);
  }
  if (f->sim) {
    const char* why = sim_check_use(f->sim, p, bytes, sim_stream(stream));
    if (why) FAIL("stream-ordering violated: %s", why);
  }
  live_block l = {u, bytes, stream, f->next_seed++};
  write_pattern(&l);
  f->live[f->num_live++] = l;
  f->requested_total += bytes;
}

static void do_misuse(fuzz_state* f) {
  uint8_t kind = next_byte(f) % 6, arg = next_byte(f);
  void* p = (void*)1;
  switch (kind) {
    case 0: { /* double free of a pointer that is not live again */
      if (f->num_recent == 0) return;
      uint8_t* q = f->recent[arg % (f->num_recent < RECENT ? f->num_recent : RECENT)];
      if (is_live(f, q)) return;
      expect_status(f, da_mempool_free(f->pool, q, sim_stream(arg % STREAMS)),
                    DA_STATUS_INVALID_ARGUMENT, "double free");
      return;
    }
    case 1: { /* a pointer the pool never gave out */
      int local = 0;
      expect_status(f, da_mempool_free(f->pool, &local, NULL), DA_STATUS_INVALID_ARGUMENT,
                    "free of a foreign pointer");
      return;
    }
    case 2: { /* inside a live block */
      if (f->num_live == 0) return;
      const live_block* l = &f->live[arg % f->num_live];
      if (l->bytes < 2) return;
      expect_status(f, da_mempool_free(f->pool, l->ptr + 1 + arg % (l->bytes - 1), NULL),
                    DA_STATUS_INVALID_ARGUMENT, "free of an interior pointer");
      return;
    }
    case 3:
      expect_status(f, da_mempool_allocate(f->pool, 0, NULL, &p), DA_STATUS_INVALID_ARGUMENT,
                    "allocate(0)");
      break;
    case 4:
      expect_status(f, da_mempool_allocate(f->pool, (size_t)-1 - arg, NULL, &p),
                    DA_STATUS_INVALID_ARGUMENT, "allocate(absurd)");
      break;
    default:
      expect_status(f, da_mempool_free(f->pool, NULL, NULL), DA_STATUS_SUCCESS, "free(NULL)");
      return;
  }
  if (p != NULL) fail(f, "a refused allocate left *ptr = %p", p);
}

static void check_stats(fuzz_state* f) {
  da_mempool_stats s;
  da_status st = da_mempool_get_stats(f->pool, &s);
  if (st != DA_STATUS_SUCCESS) FAIL("get_stats: %s", da_last_error());
  if (s.live_allocations != f->num_live)
    FAIL("stats.live_allocations=%zu, model %zu", s.live_allocations, f->num_live);
  if (s.requested_bytes != f->requested_total)
    FAIL("stats.requested_bytes=%zu, model %zu", s.requested_bytes, f->requested_total);
  if (s.allocated_bytes < s.requested_bytes || s.reserved_bytes < s.allocated_bytes ||
      s.cached_bytes != s.reserved_bytes - s.allocated_bytes || s.pending_bytes > s.cached_bytes ||
      s.largest_free_block_bytes > s.cached_bytes)
    FAIL("stats do not add up: allocated %zu requested %zu reserved %zu cached %zu "
                "pending %zu largest free %zu",
                s.allocated_bytes, s.requested_bytes, s.reserved_bytes, s.cached_bytes,
                s.pending_bytes, s.largest_free_block_bytes);
  if (!(s.fragmentation >= 0.0 && s.fragmentation <= 1.0))
    FAIL("stats.fragmentation=%g is outside [0, 1]", s.fragmentation);
  if (f->config.track_fragmentation && s.fragmentation_peak + 1e-12 < s.fragmentation)
    FAIL("fragmentation_peak %g below current %g", s.fragmentation_peak, s.fragmentation);
  if (s.peak_allocated_bytes < s.allocated_bytes || s.peak_reserved_bytes < s.reserved_bytes)
    FAIL("a peak counter is below its current value");
  if (s.reserved_bytes > f->config.max_reserved_bytes)
    FAIL("reserved %zu exceeds max_reserved_bytes %zu", s.reserved_bytes,
                f->config.max_reserved_bytes);
  if (!f->stream_ordered && s.pending_bytes != 0)
    FAIL("pending bytes without stream ordering");
  if (f->sim && (s.reserved_bytes != sim_segment_bytes(f->sim) || s.segments != sim_segments(f->sim)))
    FAIL("pool holds %zu bytes in %zu segments, backend handed out %zu in %zu",
                s.reserved_bytes, s.segments, sim_segment_bytes(f->sim), sim_segments(f->sim));
}

static void step(fuzz_state* f) {
  uint8_t op = next_byte(f) % 16;
  da_status st;
  if (op >= 8) TRACE("op %d\n", op);
  switch (op) {
    case 0: case 1: case 2: case 3:
      do_allocate(f);
      break;
    case 4: case 5: case 6:
      if (f->num_live) {
        uint8_t a = next_byte(f), b = next_byte(f);
        size_t i = a % f->num_live;
        /* Mostly the allocating stream; sometimes another (ownership handed over). */
        do_free(f, i, b < 192 ? f->live[i].stream : b % STREAMS);
      }
      break;
    case 7:
      do_misuse(f);
      break;
    case 8:
      expect_status(f, da_mempool_trim(f->pool, (next_byte(f) % 4) * f->unit), DA_STATUS_SUCCESS, "trim");
      break;
    case 9:
      if (f->sim) {
        int k = next_byte(f) % (STREAMS + 1);
        sim_complete(f->sim, k == STREAMS ? -1 : k);
      }
      break;
    case 10: {
      int k = next_byte(f) % STREAMS;
      expect_status(f, da_mempool_release_stream(f->pool, sim_stream(k)), DA_STATUS_SUCCESS,
                    "release_stream");
      break;
    }
    case 11:
      check_stats(f);
      break;
    case 12:
      st = da_mempool_reset(f->pool);
      expect_status(f, st, f->num_live ? DA_STATUS_INVALID_ARGUMENT : DA_STATUS_SUCCESS, "reset");
      if (st == DA_STATUS_SUCCESS) {
        da_mempool_stats s;
        da_mempool_get_stats(f->pool, &s);
        if (s.reserved_bytes || s.segments || s.allocations || s.peak_reserved_bytes)
          fail(f, "reset left %zu bytes in %zu segments", s.reserved_bytes, s.segments);
      }
      break;
    case 13: {
      expect_status(f, da_mempool_reset_peak_stats(f->pool), DA_STATUS_SUCCESS, "reset_peak_stats");
      da_mempool_stats s;
      da_mempool_get_stats(f->pool, &s);
      if (s.peak_allocated_bytes != s.allocated_bytes || s.peak_reserved_bytes != s.reserved_bytes)
        fail(f, "reset_peak_stats left peaks above current values");
      break;
    }
    case 14:
      if (f->sim) sim_fail_next_allocs(f->sim, next_byte(f) % 3);
      break;
    default:
      if (f->sim) sim_set_external_use(f->sim, 256 * f->unit / 4 * (next_byte(f) % 4));
      break;
  }
  if (f->failed) return;
  st = da_mempool_check(f->pool);
  if (st != DA_STATUS_SUCCESS) FAIL("after op %d: %s", op, da_last_error());
  check_stats(f);
}

/* Frees everything, gives everything back and checks that nothing is left. */
static void drain(fuzz_state* f) {
  if (f->sim) sim_fail_next_allocs(f->sim, 0);
  while (f->num_live && !f->failed) do_free(f, f->num_live - 1, f->live[f->num_live - 1].stream);
  if (f->failed) return;
  expect_status(f, da_mempool_trim(f->pool, 0), DA_STATUS_SUCCESS, "final trim");
  /* A trim that does not wait (stream-ordered segments) records fences for what is
   * pending and releases what earlier fences proved idle: two more rounds of "the
   * device finished everything" release the rest. */
  for (int round = 0; f->sim && round < 2; round++) {
    sim_complete(f->sim, -1);
    expect_status(f, da_mempool_trim(f->pool, 0), DA_STATUS_SUCCESS, "final trim");
  }
  da_mempool_stats s;
  da_mempool_get_stats(f->pool, &s);
  if (s.reserved_bytes || s.segments || s.live_allocations)
    fail(f, "after freeing everything and trim(0): %zu bytes in %zu segments, %zu live",
         s.reserved_bytes, s.segments, s.live_allocations);
  if (f->sim && sim_segments(f->sim) != 0) fail(f, "backend still has %zu segments out", sim_segments(f->sim));
}

int mp_fuzz_run(const uint8_t* data, size_t size, char* why, size_t why_len) {
  fuzz_state* f = calloc(1, sizeof *f);
  if (f == NULL) abort();
  f->data = data;
  f->size = size;
  f->why = why;
  f->why_len = why_len;
  if (why_len) why[0] = '\0';
  configure(f);
  if (f->failed) {
    free(f);
    return 1;
  }
  while (f->pos < f->size && !f->failed) step(f);

  /* Odd-length inputs end with destroy on live allocations, the rest drain first. */
  size_t live = f->num_live;
  if (!f->failed && (size % 2 == 0 || live == 0)) drain(f), live = 0;
  da_status st = da_mempool_destroy(f->pool);
  if (!f->failed) {
    expect_status(f, st, live ? DA_STATUS_INVALID_ARGUMENT : DA_STATUS_SUCCESS, "destroy");
    char count[48];
    snprintf(count, sizeof count, "%zu allocations", live);
    if (live && !strstr(da_last_error(), count))
      fail(f, "destroy with %zu live allocations said \"%s\"", live, da_last_error());
  }
  /* The handle is dead now: calls through it are refused, never acted on. */
  if (!f->failed)
    expect_status(f, da_mempool_free(f->pool, (void*)64, NULL), DA_STATUS_INVALID_ARGUMENT,
                  "free on a destroyed pool");
  int failed = f->failed;
  free(f);
  return failed;
}
