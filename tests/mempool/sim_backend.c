#include "tests/mempool/sim_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

typedef struct {
  uintptr_t begin, end;
  int stream;
  uint64_t ticket; /* safe elsewhere once streams[stream].completed >= ticket */
} sim_hazard;

typedef struct {
  int stream;
  uint64_t ticket;
  uint64_t seen[SIM_MAX_STREAMS]; /* what the stream had waited for when recorded */
} sim_event;

typedef struct {
  da_mp_backend base;
  sim_options options;
  uint64_t submitted[SIM_MAX_STREAMS];
  uint64_t completed[SIM_MAX_STREAMS];
  uint64_t seen[SIM_MAX_STREAMS][SIM_MAX_STREAMS]; /* [j][i]: j is ordered after i's work
                                                      through this ticket */
  size_t used_bytes, segments, external_bytes;
  size_t live_events;
  int fail_allocs;
  sim_hazard* hazards;
  size_t num_hazards, cap_hazards;
  char why[256];
} sim_backend;

static sim_backend* cast(da_mp_backend* be) { return (sim_backend*)be; }

static int stream_index(void* stream) {
  uintptr_t k = (uintptr_t)stream;
  return k < SIM_MAX_STREAMS ? (int)k : -1;
}

static void prune(sim_backend* be) {
  size_t kept = 0;
  for (size_t i = 0; i < be->num_hazards; i++) {
    sim_hazard* h = &be->hazards[i];
    if (be->completed[h->stream] < h->ticket) be->hazards[kept++] = *h;
  }
  be->num_hazards = kept;
}

static void push_hazard(sim_backend* be, sim_hazard h) {
  if (be->num_hazards == be->cap_hazards) {
    size_t cap = be->cap_hazards ? 2 * be->cap_hazards : 64;
    sim_hazard* grown = realloc(be->hazards, cap * sizeof *grown);
    if (grown == NULL) abort();
    be->hazards = grown;
    be->cap_hazards = cap;
  }
  be->hazards[be->num_hazards++] = h;
}

/* Work using [begin, begin+bytes) was submitted on `stream` up to now. */
static void add_hazard(sim_backend* be, uintptr_t begin, size_t bytes, int stream) {
  push_hazard(be, (sim_hazard){begin, begin + bytes, stream, ++be->submitted[stream]});
}

/* Stream j waits for all work submitted on stream i so far (cudaStreamWaitEvent):
 * j's later work is ordered after it, and after whatever i itself waited for. */
static void wait_for(sim_backend* be, int j, int i) {
  for (int x = 0; x < SIM_MAX_STREAMS; x++) {
    uint64_t through = x == i ? be->submitted[i] : be->seen[i][x];
    if (through > be->seen[j][x]) be->seen[j][x] = through;
  }
}

/* Stream j's work through `ticket` completed: so did everything it waited for. */
static void complete_through(sim_backend* be, int j, uint64_t ticket, const uint64_t* seen) {
  if (ticket > be->completed[j]) be->completed[j] = ticket;
  for (int x = 0; x < SIM_MAX_STREAMS; x++)
    if (seen[x] > be->completed[x]) be->completed[x] = seen[x];
  prune(be);
}

static da_status sim_segment_alloc(da_mp_backend* base, size_t bytes, size_t alignment,
                                   void* stream, void** ptr) {
  sim_backend* be = cast(base);
  if (be->fail_allocs > 0) {
    be->fail_allocs--;
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "simulated device: injected allocation failure");
  }
  if (bytes > be->options.capacity_bytes - be->used_bytes - be->external_bytes ||
      be->used_bytes + be->external_bytes > be->options.capacity_bytes)
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "simulated device: %zu bytes do not fit", bytes);
  void* p = aligned_alloc(alignment, bytes);
  if (p == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "simulated device: host malloc failed");
  be->used_bytes += bytes;
  be->segments++;
  base->counters.allocs++;
  /* Memory that comes back from the backend is the backend's to order (a stream-
   * ordered free before it, as cudaFreeAsync): hazards left on it are moot. */
  for (size_t i = 0; i < be->num_hazards; i++) {
    sim_hazard* h = &be->hazards[i];
    if (h->begin < (uintptr_t)p + bytes && (uintptr_t)p < h->end) h->ticket = 0;
  }
  prune(be);
  int k = stream_index(stream);
  if (be->options.segments_stream_ordered && k >= 0) add_hazard(be, (uintptr_t)p, bytes, k);
  *ptr = p;
  return DA_STATUS_SUCCESS;
}

static da_status sim_segment_free(da_mp_backend* base, void* ptr, size_t bytes, void* stream,
                                  int pending) {
  sim_backend* be = cast(base);
  if (pending && !be->options.segments_stream_ordered) {
    /* Only a stream-ordered backend may be handed memory still in use. */
    snprintf(be->why, sizeof be->why, "pending segment freed on a backend without stream-ordered frees");
    abort();
  }
  (void)stream;
  free(ptr);
  be->used_bytes -= bytes;
  be->segments--;
  base->counters.frees++;
  return DA_STATUS_SUCCESS;
}

static da_status sim_event_create(da_mp_backend* base, void** event) {
  sim_event* e = calloc(1, sizeof *e);
  if (e == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "simulated event");
  cast(base)->live_events++;
  *event = e;
  return DA_STATUS_SUCCESS;
}

static da_status sim_event_record(da_mp_backend* base, void* event, void* stream) {
  sim_backend* be = cast(base);
  int k = stream_index(stream);
  if (k < 0) return da_error_set(DA_STATUS_CUDA_ERROR, "simulated device: bad stream %p", stream);
  sim_event* e = event;
  e->stream = k;
  e->ticket = be->submitted[k];
  memcpy(e->seen, be->seen[k], sizeof e->seen);
  base->counters.events_recorded++;
  return DA_STATUS_SUCCESS;
}

static int sim_event_query(da_mp_backend* base, void* event) {
  sim_event* e = event;
  base->counters.event_queries++;
  return cast(base)->completed[e->stream] >= e->ticket;
}

static da_status sim_event_synchronize(da_mp_backend* base, void* event) {
  sim_event* e = event;
  complete_through(cast(base), e->stream, e->ticket, e->seen);
  base->counters.syncs++;
  return DA_STATUS_SUCCESS;
}

static void sim_event_destroy(da_mp_backend* base, void* event) {
  cast(base)->live_events--;
  free(event);
}

static da_status sim_mem_info(da_mp_backend* base, size_t* free_bytes, size_t* total_bytes) {
  sim_backend* be = cast(base);
  size_t used = be->used_bytes + be->external_bytes;
  *total_bytes = be->options.capacity_bytes;
  *free_bytes = used < *total_bytes ? *total_bytes - used : 0;
  return DA_STATUS_SUCCESS;
}

static void sim_quiesce(da_mp_backend* base) {
  sim_complete(base, -1);
  base->counters.syncs++;
}

static void sim_destroy(da_mp_backend* base) {
  sim_backend* be = cast(base);
  free(be->hazards);
  free(be);
}

da_mp_backend* sim_backend_create(const sim_options* options) {
  sim_backend* be = calloc(1, sizeof *be);
  if (be == NULL) return NULL;
  be->options = *options;
  da_mp_backend* b = &be->base;
  b->name = "simulated device";
  b->stream_ordered = options->stream_ordered;
  b->segments_stream_ordered = options->segments_stream_ordered;
  b->segment_alloc = sim_segment_alloc;
  b->segment_free = sim_segment_free;
  b->event_create = sim_event_create;
  b->event_record = sim_event_record;
  b->event_query = sim_event_query;
  b->event_synchronize = sim_event_synchronize;
  b->event_destroy = sim_event_destroy;
  b->mem_info = sim_mem_info;
  b->quiesce = sim_quiesce;
  b->destroy = sim_destroy;
  return b;
}

void sim_complete(da_mp_backend* base, int k) {
  sim_backend* be = cast(base);
  for (int s = 0; s < SIM_MAX_STREAMS; s++)
    if (k < 0 || s == k) complete_through(be, s, be->submitted[s], be->seen[s]);
}

void sim_set_external_use(da_mp_backend* be, size_t bytes) { cast(be)->external_bytes = bytes; }
void sim_fail_next_allocs(da_mp_backend* be, int n) { cast(be)->fail_allocs = n; }
size_t sim_segment_bytes(const da_mp_backend* be) { return ((const sim_backend*)be)->used_bytes; }
size_t sim_segments(const da_mp_backend* be) { return ((const sim_backend*)be)->segments; }
size_t sim_live_events(const da_mp_backend* be) { return ((const sim_backend*)be)->live_events; }

void sim_note_free(da_mp_backend* base, void* ptr, size_t bytes, void* alloc_stream,
                   void* free_stream) {
  sim_backend* be = cast(base);
  int i = stream_index(alloc_stream), j = stream_index(free_stream);
  if (!be->options.stream_ordered || i < 0 || j < 0) return;
  if (i != j) wait_for(be, j, i);
  add_hazard(be, (uintptr_t)ptr, bytes, j);
}

const char* sim_check_use(da_mp_backend* base, void* ptr, size_t bytes, void* stream) {
  sim_backend* be = cast(base);
  if (!be->options.stream_ordered) return NULL;
  prune(be);
  int k = stream_index(stream);
  uintptr_t begin = (uintptr_t)ptr, end = begin + bytes;
  for (size_t i = 0; i < be->num_hazards; i++) {
    const sim_hazard* h = &be->hazards[i];
    if (h->stream == k || h->end <= begin || end <= h->begin) continue;
    if (k >= 0 && be->seen[k][h->stream] >= h->ticket) continue; /* ordered after it */
    snprintf(be->why, sizeof be->why,
             "[%p, +%zu) handed to stream %d while stream %d's work (ticket %llu, completed "
             "%llu) may still use [%p, %p)",
             ptr, bytes, k, h->stream, (unsigned long long)h->ticket,
             (unsigned long long)be->completed[h->stream], (void*)h->begin, (void*)h->end);
    return be->why;
  }
  return NULL;
}
