/* The gradient communicator: DDP-style bucketing (bucket.h), compression with error
 * feedback (compress.h on the host, gpu_compress.h on the device), over any engine.
 *
 * A bucket's work is one job (comm_internal.h): pack the gradients into the bucket
 * (unless they already lie back to back), add the residual, encode, exchange with the
 * collective that suits the format, decode, unpack. The MPI engine runs it on its
 * worker thread while the caller goes on with its backward pass; the NCCL engine
 * enqueues it on its stream. Buckets launch strictly in plan order, so every rank
 * issues the same collectives in the same order whatever order its gradients become
 * ready in. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/bucket.h"
#include "comm/comm_internal.h"
#include "comm/compress.h"
#include "comm/gpu_compress.h"

#define NAME_CAPACITY 128

typedef struct {
  char name[NAME_CAPACITY];
  void* data;
  size_t count;
  da_dtype dtype;
} grad_tensor;

typedef struct {
  size_t count;
  size_t bytes;
  da_dtype dtype;
  int first, num_tensors; /* into plan.tensors */
  int in_place;
  int compressed;         /* a lossy or cast algorithm applies (float32 buckets) */
  da_cx_layout layout;
  void* data;             /* the bucket: pool memory, or the caller's when in place */
  void* own_data;
  float* residual;
  void* payload;
  void* gathered;
  void* workspace;
  int pending;            /* gradients not yet marked this step */
  int residual_ready;     /* the residual has been zeroed */
} grad_bucket;

struct da_grad_comm {
  da_comm* comm;
  da_grad_config config;
  da_mempool* pool;
  int device_memory;
  grad_tensor* tensors;
  int num_tensors, tensor_capacity;
  int finalized;
  da_bucket_plan plan;
  grad_bucket* buckets;
  unsigned char* marked;
  int next_launch;
  int in_flight; /* buckets launched since the last synchronize */
  uint64_t step;
  da_grad_stats stats;
  uint64_t buckets_completed; /* atomic: the MPI worker counts */
  int poisoned;               /* a wait failed: bucket memory may still be in use */
};

typedef struct {
  da_grad_comm* grad;
  int bucket;
  uint64_t step;
} bucket_job_arg;

da_compress_config da_compress_config_default(void) {
  da_compress_config c;
  c.algorithm = DA_COMPRESS_NONE;
  c.ratio = 0.01;
  c.error_feedback = 1;
  c.seed = 0x5eed;
  c.int8_chunk = 256;
  return c;
}

da_grad_config da_grad_config_default(void) {
  da_grad_config c;
  c.bucket_cap_bytes = (size_t)25 << 20;
  c.first_bucket_cap_bytes = (size_t)1 << 20;
  c.max_tensors_per_bucket = 32;
  c.average = 1;
  c.compress = da_compress_config_default();
  c.pool = NULL;
  return c;
}

const char* da_compress_algorithm_name(da_compress_algorithm a) {
  switch (a) {
    case DA_COMPRESS_NONE: return "none";
    case DA_COMPRESS_FP16: return "fp16";
    case DA_COMPRESS_BF16: return "bf16";
    case DA_COMPRESS_TOPK: return "topk";
    case DA_COMPRESS_RANDOMK: return "randomk";
    case DA_COMPRESS_THRESHOLD: return "threshold";
    case DA_COMPRESS_INT8: return "int8";
  }
  return "unknown";
}

static int lossy(da_compress_algorithm a) { return a != DA_COMPRESS_NONE; }

/* --- Creation and registration --------------------------------------------------------- */

da_status da_grad_create(da_comm* comm, const da_grad_config* config, da_grad_comm** grad) {
  da_error_clear();
  if (comm == NULL || grad == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_create: comm and grad must not be NULL");
  *grad = NULL;
  da_grad_config c = config ? *config : da_grad_config_default();
  if (c.bucket_cap_bytes == 0 || c.first_bucket_cap_bytes == 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "grad config: bucket_cap_bytes=%zu and first_bucket_cap_bytes=%zu must be "
                        "positive",
                        c.bucket_cap_bytes, c.first_bucket_cap_bytes);
  if (c.max_tensors_per_bucket < 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "grad config: max_tensors_per_bucket=%d must be at least 1",
                        c.max_tensors_per_bucket);
  if (c.average != 0 && c.average != 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad config: average=%d must be 0 or 1", c.average);
  da_status st = da_cx_check_config(&c.compress);
  if (st != DA_STATUS_SUCCESS) return da_error_wrap(st, "grad config");
  da_mempool* pool = c.pool;
  if (pool == NULL) {
    st = da_mempool_default(comm->engine == DA_COMM_ENGINE_NCCL ? comm->device : DA_MEMPOOL_HOST_DEVICE,
                            &pool);
    if (st != DA_STATUS_SUCCESS) return da_error_wrap(st, "grad_create: default pool");
  }
  da_grad_comm* g = (da_grad_comm*)calloc(1, sizeof *g);
  if (g == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "grad_create: no memory");
  g->comm = comm;
  g->config = c;
  g->pool = pool;
  g->device_memory = comm->engine == DA_COMM_ENGINE_NCCL;
  *grad = g;
  return DA_STATUS_SUCCESS;
}

da_status da_grad_register(da_grad_comm* g, const char* name, void* data, size_t count, da_dtype dtype,
                           int* index) {
  da_error_clear();
  if (g == NULL || name == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_register: grad and name must not be NULL");
  if (index) *index = -1;
  if (g->finalized)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "grad_register('%s'): the plan is final (registration ends with "
                        "da_grad_finalize or the first da_grad_mark_ready)",
                        name);
  size_t len = strlen(name);
  if (len == 0 || len >= NAME_CAPACITY)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_register: name has %zu characters, allowed 1..%d",
                        len, NAME_CAPACITY - 1);
  if (data == NULL || count == 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "grad_register('%s'): data must not be NULL and count (%zu) positive", name, count);
  if (da_dtype_size(dtype) == 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_register('%s'): dtype=%d is not a da_dtype", name,
                        (int)dtype);
  for (int i = 0; i < g->num_tensors; i++)
    if (strcmp(g->tensors[i].name, name) == 0)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_register: name '%s' is already index %d", name, i);
  da_status st = g->comm->vt->check_buffer(g->comm, data, "data");
  if (st != DA_STATUS_SUCCESS) return da_error_wrap(st, "grad_register('%s')", name);
  if (g->num_tensors == g->tensor_capacity) {
    int cap = g->tensor_capacity ? 2 * g->tensor_capacity : 16;
    grad_tensor* grown = (grad_tensor*)realloc(g->tensors, sizeof(grad_tensor) * (size_t)cap);
    if (grown == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "grad_register: no memory");
    g->tensors = grown;
    g->tensor_capacity = cap;
  }
  grad_tensor* t = &g->tensors[g->num_tensors];
  memcpy(t->name, name, len + 1);
  t->data = data;
  t->count = count;
  t->dtype = dtype;
  if (index) *index = g->num_tensors;
  g->num_tensors++;
  return DA_STATUS_SUCCESS;
}

da_status da_grad_find(const da_grad_comm* g, const char* name, int* index) {
  da_error_clear();
  if (g == NULL || name == NULL || index == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_find: grad, name and index must not be NULL");
  for (int i = 0; i < g->num_tensors; i++)
    if (strcmp(g->tensors[i].name, name) == 0) {
      *index = i;
      return DA_STATUS_SUCCESS;
    }
  *index = -1;
  return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_find: no gradient is registered as '%s'", name);
}

/* --- Finalize -------------------------------------------------------------------------------- */

typedef struct {
  uintptr_t begin, end;
  int index;
} address_range;

static int compare_range(const void* a, const void* b) {
  uintptr_t x = ((const address_range*)a)->begin, y = ((const address_range*)b)->begin;
  return (x > y) - (x < y);
}

static da_status check_overlaps(const da_grad_comm* g) {
  int n = g->num_tensors;
  address_range* r = (address_range*)malloc(sizeof *r * (size_t)(n > 0 ? n : 1));
  if (r == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "grad_finalize: no memory");
  for (int i = 0; i < n; i++) {
    r[i].begin = (uintptr_t)g->tensors[i].data;
    r[i].end = r[i].begin + g->tensors[i].count * da_dtype_size(g->tensors[i].dtype);
    r[i].index = i;
  }
  qsort(r, (size_t)n, sizeof *r, compare_range);
  da_status st = DA_STATUS_SUCCESS;
  for (int i = 1; i < n && st == DA_STATUS_SUCCESS; i++)
    if (r[i].begin < r[i - 1].end)
      st = da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_finalize: gradients '%s' and '%s' overlap in memory",
                        g->tensors[r[i - 1].index].name, g->tensors[r[i].index].name);
  free(r);
  return st;
}

/* The plan's signature: every rank must register the same gradients and configure
 * the same bucketing and compression. Fields stay in [0, 2^62). */
enum {
  SIG_TENSORS, SIG_ELEMENTS, SIG_LIST_HASH, SIG_ALGORITHM, SIG_RATIO_HI, SIG_RATIO_LO, SIG_SEED_HI,
  SIG_SEED_LO, SIG_INT8_CHUNK, SIG_ERROR_FEEDBACK, SIG_AVERAGE, SIG_CAP, SIG_FIRST_CAP, SIG_MAX_TENSORS,
  SIG_FIELDS
};
static const char* const plan_field_names[SIG_FIELDS] = {
    "number of gradients", "total elements", "gradient sizes and dtypes (hash)", "compress.algorithm",
    "compress.ratio", "compress.ratio", "compress.seed", "compress.seed", "compress.int8_chunk",
    "compress.error_feedback", "average", "bucket_cap_bytes", "first_bucket_cap_bytes",
    "max_tensors_per_bucket"};

static void plan_signature(const da_grad_comm* g, int64_t* s) {
  const uint64_t mask = (1ull << 62) - 1;
  uint64_t hash = 1469598103934665603ull, elements = 0;
  for (int i = 0; i < g->num_tensors; i++) {
    hash = (hash ^ (uint64_t)g->tensors[i].count) * 1099511628211ull;
    hash = (hash ^ (uint64_t)g->tensors[i].dtype) * 1099511628211ull;
    elements += g->tensors[i].count;
  }
  uint64_t ratio_bits;
  memcpy(&ratio_bits, &g->config.compress.ratio, sizeof ratio_bits);
  s[SIG_TENSORS] = g->num_tensors;
  s[SIG_ELEMENTS] = (int64_t)(elements & mask);
  s[SIG_LIST_HASH] = (int64_t)(hash & mask);
  s[SIG_ALGORITHM] = g->config.compress.algorithm;
  s[SIG_RATIO_HI] = (int64_t)(ratio_bits >> 32);
  s[SIG_RATIO_LO] = (int64_t)(ratio_bits & 0xffffffffu);
  s[SIG_SEED_HI] = (int64_t)(g->config.compress.seed >> 32);
  s[SIG_SEED_LO] = (int64_t)(g->config.compress.seed & 0xffffffffu);
  s[SIG_INT8_CHUNK] = (int64_t)(g->config.compress.int8_chunk & mask);
  s[SIG_ERROR_FEEDBACK] = g->config.compress.error_feedback;
  s[SIG_AVERAGE] = g->config.average;
  s[SIG_CAP] = (int64_t)(g->config.bucket_cap_bytes & mask);
  s[SIG_FIRST_CAP] = (int64_t)(g->config.first_bucket_cap_bytes & mask);
  s[SIG_MAX_TENSORS] = g->config.max_tensors_per_bucket;
}

static da_status pool_allocate(da_grad_comm* g, size_t bytes, void** p, const char* what, int bucket) {
  da_status st = da_mempool_allocate(g->pool, bytes, g->comm->stream, p);
  if (st != DA_STATUS_SUCCESS)
    return da_error_wrap(st, "grad_finalize: bucket %d: %s (%zu bytes) from the pool", bucket, what, bytes);
  return DA_STATUS_SUCCESS;
}

static void release_buckets(da_grad_comm* g) {
  if (g->buckets == NULL) return;
  for (int b = 0; b < g->plan.num_buckets; b++) {
    grad_bucket* k = &g->buckets[b];
    void* owned[] = {k->own_data, k->residual, k->payload, k->gathered, k->workspace};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
      if (owned[i]) da_mempool_free(g->pool, owned[i], g->comm->stream);
  }
  free(g->buckets);
  g->buckets = NULL;
}

static da_status setup_bucket(da_grad_comm* g, int b) {
  grad_bucket* k = &g->buckets[b];
  const da_bucket* plan = &g->plan.buckets[b];
  const da_compress_config* c = &g->config.compress;
  da_comm* comm = g->comm;
  k->count = plan->count;
  k->dtype = plan->dtype;
  k->bytes = plan->count * da_dtype_size(plan->dtype);
  k->first = plan->first;
  k->num_tensors = plan->num_tensors;
  k->compressed = lossy(c->algorithm) && plan->dtype == DA_DTYPE_F32;
  const int* members = g->plan.tensors + plan->first;
  k->in_place = 1;
  for (int j = 1; j < plan->num_tensors; j++) {
    const grad_tensor* prev = &g->tensors[members[j - 1]];
    if ((char*)g->tensors[members[j]].data != (char*)prev->data + prev->count * da_dtype_size(prev->dtype))
      k->in_place = 0;
  }
  if (k->compressed) {
    k->layout = da_cx_payload_layout(c, k->count);
    if ((c->algorithm == DA_COMPRESS_TOPK || c->algorithm == DA_COMPRESS_RANDOMK ||
         c->algorithm == DA_COMPRESS_THRESHOLD) &&
        k->count > DA_CX_MAX_SPARSE_ELEMENTS)
      return da_error_set(DA_STATUS_NOT_SUPPORTED,
                          "grad_finalize: bucket %d has %zu elements, beyond the uint32 indices of %s",
                          b, k->count, da_compress_algorithm_name(c->algorithm));
  } else {
    memset(&k->layout, 0, sizeof k->layout);
    k->layout.bytes = k->bytes;
  }
  if (comm->engine == DA_COMM_ENGINE_MPI) {
    size_t per_call = k->compressed ? (k->layout.gathered ? k->layout.bytes : k->layout.slots) : k->count;
    if (per_call > 0x7fffffffu)
      return da_error_set(DA_STATUS_NOT_SUPPORTED,
                          "grad_finalize: bucket %d needs %zu elements in one MPI call, above INT_MAX "
                          "(a single gradient this large cannot be split by bucketing)",
                          b, per_call);
  }
  da_status st = DA_STATUS_SUCCESS;
  if (k->in_place) {
    k->data = g->tensors[members[0]].data;
  } else {
    st = pool_allocate(g, k->bytes, &k->own_data, "bucket buffer", b);
    k->data = k->own_data;
  }
  if (st || !k->compressed) return st;
  if (c->error_feedback) {
    /* zeroed by the first job, on the engine's stream */
    st = pool_allocate(g, k->count * sizeof(float), (void**)&k->residual, "error-feedback residual", b);
  }
  if (!st) st = pool_allocate(g, k->layout.bytes, &k->payload, "payload", b);
  if (!st && k->layout.gathered)
    st = pool_allocate(g, k->layout.bytes * (size_t)comm->size, &k->gathered, "gathered payloads", b);
  if (!st && c->algorithm == DA_COMPRESS_RANDOMK)
    st = pool_allocate(g, k->layout.slots * sizeof(uint32_t), &k->workspace, "random-k indices", b);
  if (!st && g->device_memory &&
      (c->algorithm == DA_COMPRESS_TOPK || c->algorithm == DA_COMPRESS_THRESHOLD))
    st = pool_allocate(g, da_gpu_select_workspace_bytes(k->count), &k->workspace, "selection workspace", b);
  return st;
}

da_status da_grad_finalize(da_grad_comm* g) {
  da_error_clear();
  if (g == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_finalize: grad must not be NULL");
  if (g->finalized) return DA_STATUS_SUCCESS;
  da_status st = check_overlaps(g);
  if (st != DA_STATUS_SUCCESS) return st;

  /* Collective: every rank checks the plan's inputs before any bucket moves. */
  int64_t sig[SIG_FIELDS], lo = 0, hi = 0;
  int mismatch = -1;
  plan_signature(g, sig);
  st = g->comm->vt->verify(g->comm, sig, SIG_FIELDS, &mismatch, &lo, &hi);
  if (st != DA_STATUS_SUCCESS) return st;
  if (mismatch >= 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "grad_finalize: the ranks disagree on the %s (%lld on rank %d, from %lld to "
                        "%lld across the %d ranks): register the same gradients with the same "
                        "config everywhere",
                        plan_field_names[mismatch], (long long)sig[mismatch], g->comm->rank,
                        (long long)lo, (long long)hi, g->comm->size);

  size_t* counts = (size_t*)malloc(sizeof(size_t) * (size_t)(g->num_tensors + 1));
  da_dtype* dtypes = (da_dtype*)malloc(sizeof(da_dtype) * (size_t)(g->num_tensors + 1));
  if (counts == NULL || dtypes == NULL) {
    free(counts);
    free(dtypes);
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "grad_finalize: no memory");
  }
  for (int i = 0; i < g->num_tensors; i++) {
    counts[i] = g->tensors[i].count;
    dtypes[i] = g->tensors[i].dtype;
  }
  st = da_bucket_plan_build(counts, dtypes, g->num_tensors, g->config.bucket_cap_bytes,
                            g->config.first_bucket_cap_bytes, g->config.max_tensors_per_bucket, &g->plan);
  free(counts);
  free(dtypes);
  if (st != DA_STATUS_SUCCESS) return st;
  g->buckets = (grad_bucket*)calloc((size_t)(g->plan.num_buckets + 1), sizeof(grad_bucket));
  g->marked = (unsigned char*)calloc((size_t)(g->num_tensors + 1), 1);
  if (g->buckets == NULL || g->marked == NULL) {
    st = da_error_set(DA_STATUS_OUT_OF_MEMORY, "grad_finalize: no memory");
  }
  for (int b = 0; b < g->plan.num_buckets && st == DA_STATUS_SUCCESS; b++) st = setup_bucket(g, b);
  if (st != DA_STATUS_SUCCESS) {
    char sentence[512];
    snprintf(sentence, sizeof sentence, "%s", da_last_error());
    release_buckets(g);
    free(g->marked);
    g->marked = NULL;
    da_bucket_plan_free(&g->plan);
    return da_error_set(st, "%s", sentence);
  }
  for (int b = 0; b < g->plan.num_buckets; b++) g->buckets[b].pending = g->buckets[b].num_tensors;
  g->finalized = 1;
  return DA_STATUS_SUCCESS;
}

/* --- The bucket job (runs on the engine's communication stream) ------------------------------ */

static da_status reduce_compressed(da_comm* comm, da_grad_comm* g, grad_bucket* k, int bucket,
                                   uint64_t step) {
  const da_compress_config* c = &g->config.compress;
  const int dev = g->device_memory;
  void* stream = comm->stream;
  float* x = (float*)k->data;
  const size_t n = k->count;
  const da_cx_layout* l = &k->layout;
  const float average = g->config.average ? (float)(1.0 / comm->size) : 1.0f;
  float* residual = k->residual;
  da_status st = DA_STATUS_SUCCESS;

  if (residual && !k->residual_ready) {
    if (dev)
      st = da_gpu_zero(residual, n * sizeof(float), stream);
    else
      memset(residual, 0, n * sizeof(float));
    if (st) return st;
    k->residual_ready = 1;
  } else if (residual) {
    if (dev)
      st = da_gpu_add(x, residual, n, stream);
    else
      da_cx_add(x, residual, n);
    if (st) return st;
  }
  char* payload = (char*)k->payload;
  switch (c->algorithm) {
    case DA_COMPRESS_FP16:
    case DA_COMPRESS_BF16: {
      int elem = c->algorithm == DA_COMPRESS_FP16 ? DA_DTYPE_F16 : DA_DTYPE_BF16;
      /* Scaled before the cast (DDP's fp16 hook) so that the half-precision sum of
       * the ranks does not overflow. */
      if (dev)
        st = da_gpu_cast_encode(elem, x, n, average, (uint16_t*)payload, residual, stream);
      else
        da_cx_cast_encode(elem, x, n, average, (uint16_t*)payload, residual);
      if (st) return st;
      da_comm_opdesc d = {DA_OP_ALLREDUCE, payload, payload, n, (da_elem)elem, DA_COMM_SUM, 0};
      st = comm->vt->run(comm, &d, 1);
      if (st) return st;
      if (dev) return da_gpu_cast_decode(elem, (uint16_t*)payload, n, 1.0f, x, stream);
      da_cx_cast_decode(elem, (uint16_t*)payload, n, 1.0f, x);
      return DA_STATUS_SUCCESS;
    }
    case DA_COMPRESS_TOPK:
    case DA_COMPRESS_THRESHOLD: {
      uint32_t* idx = (uint32_t*)(payload + l->idx_offset);
      float* val = (float*)(payload + l->val_offset);
      if (c->algorithm == DA_COMPRESS_TOPK) {
        if (dev)
          st = da_gpu_topk_encode(x, n, l->slots, idx, val, residual, k->workspace, stream);
        else
          da_cx_topk_encode(x, n, l->slots, idx, val, residual);
      } else {
        if (dev)
          st = da_gpu_threshold_encode(x, n, c->ratio, l->slots, idx, val, residual, k->workspace, stream);
        else
          da_cx_threshold_encode(x, n, c->ratio, l->slots, idx, val, residual, NULL);
      }
      if (st) return st;
      /* Indices differ between ranks: gather every rank's (index, value) pairs and
       * add them up in rank order. */
      da_comm_opdesc d = {DA_OP_ALLGATHER, payload, k->gathered, l->bytes, DA_ELEM_U8, DA_COMM_SUM, 0};
      st = comm->vt->run(comm, &d, 1);
      if (st) return st;
      if (dev) st = da_gpu_zero(x, n * sizeof(float), stream);
      else memset(x, 0, n * sizeof(float));
      for (int r = 0; r < comm->size && !st; r++) {
        const char* p = (const char*)k->gathered + (size_t)r * l->bytes;
        const uint32_t* ri = (const uint32_t*)(p + l->idx_offset);
        const float* rv = (const float*)(p + l->val_offset);
        if (dev)
          st = da_gpu_sparse_accumulate(x, ri, rv, l->slots, stream);
        else
          da_cx_sparse_accumulate(x, ri, rv, l->slots);
      }
      if (st || !g->config.average) return st;
      if (dev) return da_gpu_scale(x, n, average, stream);
      da_cx_scale(x, n, average);
      return DA_STATUS_SUCCESS;
    }
    case DA_COMPRESS_RANDOMK: {
      /* Every rank derives the same indices: only the values travel, summed. */
      uint64_t key = da_cx_randomk_key(c->seed, step, (uint64_t)bucket);
      uint32_t* idx = (uint32_t*)k->workspace;
      float* val = (float*)payload;
      if (dev)
        st = da_gpu_randomk_encode(x, n, l->slots, key, idx, val, residual, stream);
      else
        da_cx_randomk_encode(x, n, l->slots, key, idx, val, residual);
      if (st) return st;
      da_comm_opdesc d = {DA_OP_ALLREDUCE, val, val, l->slots, DA_ELEM_F32,
                          g->config.average ? DA_COMM_AVG : DA_COMM_SUM, 0};
      st = comm->vt->run(comm, &d, 1);
      if (st) return st;
      if (dev) {
        st = da_gpu_zero(x, n * sizeof(float), stream);
        return st ? st : da_gpu_scatter(x, idx, val, l->slots, stream);
      }
      memset(x, 0, n * sizeof(float));
      da_cx_scatter(x, idx, val, l->slots);
      return DA_STATUS_SUCCESS;
    }
    case DA_COMPRESS_INT8: {
      float* scales = (float*)(payload + l->scales_offset);
      int8_t* q = (int8_t*)(payload + l->q_offset);
      if (dev)
        st = da_gpu_int8_encode(x, n, c->int8_chunk, scales, q, residual, stream);
      else
        da_cx_int8_encode(x, n, c->int8_chunk, scales, q, residual);
      if (st) return st;
      /* Scales differ between ranks, so int8 cannot be summed on the wire. */
      da_comm_opdesc d = {DA_OP_ALLGATHER, payload, k->gathered, l->bytes, DA_ELEM_U8, DA_COMM_SUM, 0};
      st = comm->vt->run(comm, &d, 1);
      if (st) return st;
      if (dev)
        return da_gpu_int8_decode_sum(x, n, c->int8_chunk, k->gathered, l->bytes, l->scales_offset,
                                      l->q_offset, comm->size, average, stream);
      memset(x, 0, n * sizeof(float));
      for (int r = 0; r < comm->size; r++) {
        const char* p = (const char*)k->gathered + (size_t)r * l->bytes;
        da_cx_int8_accumulate(x, n, c->int8_chunk, (const float*)(p + l->scales_offset),
                              (const int8_t*)(p + l->q_offset));
      }
      if (g->config.average) da_cx_scale(x, n, average);
      return DA_STATUS_SUCCESS;
    }
    case DA_COMPRESS_NONE: break;
  }
  return da_error_set(DA_STATUS_INTERNAL_ERROR, "bucket %d: no compressed path for algorithm %d", bucket,
                      (int)c->algorithm);
}

static da_status bucket_job(da_comm* comm, void* arg) {
  const bucket_job_arg* a = (const bucket_job_arg*)arg;
  da_grad_comm* g = a->grad;
  grad_bucket* k = &g->buckets[a->bucket];
  const size_t esz = da_dtype_size(k->dtype);
  const int* members = g->plan.tensors + k->first;
  da_status st = DA_STATUS_SUCCESS;
  if (!k->in_place)
    for (int j = 0; j < k->num_tensors && !st; j++) {
      const grad_tensor* t = &g->tensors[members[j]];
      st = comm->vt->copy(comm, (char*)k->data + g->plan.offset_of[members[j]] * esz, t->data,
                          t->count * esz);
    }
  if (!st) {
    if (k->compressed) {
      st = reduce_compressed(comm, g, k, a->bucket, a->step);
    } else {
      da_comm_opdesc d = {DA_OP_ALLREDUCE, k->data, k->data, k->count, (da_elem)k->dtype,
                          g->config.average ? DA_COMM_AVG : DA_COMM_SUM, 0};
      st = comm->vt->run(comm, &d, 1);
    }
  }
  if (!st && !k->in_place)
    for (int j = 0; j < k->num_tensors && !st; j++) {
      const grad_tensor* t = &g->tensors[members[j]];
      st = comm->vt->copy(comm, t->data, (const char*)k->data + g->plan.offset_of[members[j]] * esz,
                          t->count * esz);
    }
  if (!st && !g->device_memory) __atomic_add_fetch(&g->buckets_completed, 1, __ATOMIC_RELEASE);
  if (st) return da_error_wrap(st, "gradient bucket %d", a->bucket);
  return DA_STATUS_SUCCESS;
}

/* --- Steps ------------------------------------------------------------------------------------ */

static da_status launch(da_grad_comm* g, int b) {
  bucket_job_arg arg = {g, b, g->step};
  da_status st = g->comm->vt->submit(g->comm, bucket_job, &arg, sizeof arg);
  if (st != DA_STATUS_SUCCESS) {
    g->poisoned = 1;
    return st;
  }
  g->stats.buckets_launched++;
  g->stats.launched_this_step++;
  g->stats.bytes_reduced += g->buckets[b].bytes;
  g->stats.bytes_sent += g->buckets[b].compressed ? g->buckets[b].layout.bytes : g->buckets[b].bytes;
  g->in_flight++;
  return DA_STATUS_SUCCESS;
}

static da_status mark(da_grad_comm* g, int index, void* stream) {
  if (g->device_memory) {
    da_status st = g->comm->vt->wait_stream(g->comm, stream);
    if (st != DA_STATUS_SUCCESS) return st;
  }
  g->marked[index] = 1;
  grad_bucket* k = &g->buckets[g->plan.bucket_of[index]];
  k->pending--;
  while (g->next_launch < g->plan.num_buckets && g->buckets[g->next_launch].pending == 0) {
    da_status st = launch(g, g->next_launch);
    if (st != DA_STATUS_SUCCESS) return st;
    g->next_launch++;
  }
  return DA_STATUS_SUCCESS;
}

da_status da_grad_mark_ready(da_grad_comm* g, int index, void* stream) {
  da_error_clear();
  if (g == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_mark_ready: grad must not be NULL");
  if (!g->finalized) {
    da_status st = da_grad_finalize(g);
    if (st != DA_STATUS_SUCCESS) return st;
  }
  if (index < 0 || index >= g->num_tensors)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_mark_ready: index=%d is outside [0, %d)", index,
                        g->num_tensors);
  if (g->marked[index])
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "grad_mark_ready: gradient '%s' (index %d) is already marked in this step",
                        g->tensors[index].name, index);
  return mark(g, index, stream);
}

da_status da_grad_synchronize(da_grad_comm* g) {
  da_error_clear();
  if (g == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_synchronize: grad must not be NULL");
  if (!g->finalized) {
    da_status st = da_grad_finalize(g);
    if (st != DA_STATUS_SUCCESS) return st;
  }
  int unmarked = 0;
  for (int i = 0; i < g->num_tensors; i++)
    if (!g->marked[i]) {
      unmarked++;
      /* NCCL: produced on the legacy default stream, as far as we know. */
      da_status st = mark(g, i, NULL);
      if (st != DA_STATUS_SUCCESS) return st;
    }
  da_status st = g->comm->vt->synchronize(g->comm);
  if (st != DA_STATUS_SUCCESS) {
    g->poisoned = 1;
    return st;
  }
  if (g->device_memory) g->buckets_completed += (uint64_t)g->in_flight;
  g->in_flight = 0;
  memset(g->marked, 0, (size_t)g->num_tensors);
  for (int b = 0; b < g->plan.num_buckets; b++) g->buckets[b].pending = g->buckets[b].num_tensors;
  g->next_launch = 0;
  g->step++;
  g->stats.steps++;
  g->stats.unmarked_last_step = unmarked;
  g->stats.launched_this_step = 0;
  return DA_STATUS_SUCCESS;
}

da_status da_grad_destroy(da_grad_comm* g) {
  da_error_clear();
  if (g == NULL) return DA_STATUS_SUCCESS;
  da_status st = DA_STATUS_SUCCESS;
  if (g->in_flight > 0 && !g->poisoned) {
    st = g->comm->vt->synchronize(g->comm);
    if (st != DA_STATUS_SUCCESS) g->poisoned = 1;
  }
  /* After a failed wait the engine may still write into bucket memory: keep it. */
  if (!g->poisoned) {
    release_buckets(g);
    /* The engine's stream may be destroyed after us: the pool must not keep
     * fencing a stream handle that is about to die (da_mempool.h). */
    if (g->comm->stream != NULL) {
      da_status rs = da_mempool_release_stream(g->pool, g->comm->stream);
      if (st == DA_STATUS_SUCCESS) st = rs;
    }
  } else {
    free(g->buckets);
  }
  da_bucket_plan_free(&g->plan);
  free(g->marked);
  free(g->tensors);
  free(g);
  return st;
}

/* --- Queries ------------------------------------------------------------------------------------ */

da_status da_grad_num_buckets(const da_grad_comm* g, int* num_buckets) {
  da_error_clear();
  if (g == NULL || num_buckets == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_num_buckets: grad and num_buckets must not be NULL");
  if (!g->finalized)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_num_buckets: call da_grad_finalize first");
  *num_buckets = g->plan.num_buckets;
  return DA_STATUS_SUCCESS;
}

da_status da_grad_bucket(const da_grad_comm* g, int bucket, da_grad_bucket_info* info, int* tensors,
                         int max_tensors) {
  da_error_clear();
  if (g == NULL || info == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_bucket: grad and info must not be NULL");
  if (!g->finalized)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_bucket: call da_grad_finalize first");
  if (bucket < 0 || bucket >= g->plan.num_buckets)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_bucket: bucket=%d is outside [0, %d)", bucket,
                        g->plan.num_buckets);
  const grad_bucket* k = &g->buckets[bucket];
  info->count = k->count;
  info->bytes = k->bytes;
  info->dtype = k->dtype;
  info->num_tensors = k->num_tensors;
  info->in_place = k->in_place;
  info->payload_bytes = k->compressed ? k->layout.bytes : k->bytes;
  if (tensors) {
    if (max_tensors < k->num_tensors)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_bucket: max_tensors=%d is below the bucket's %d",
                          max_tensors, k->num_tensors);
    memcpy(tensors, g->plan.tensors + k->first, sizeof(int) * (size_t)k->num_tensors);
  }
  return DA_STATUS_SUCCESS;
}

da_status da_grad_get_stats(const da_grad_comm* g, da_grad_stats* stats) {
  da_error_clear();
  if (g == NULL || stats == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "grad_get_stats: grad and stats must not be NULL");
  *stats = g->stats;
  stats->buckets_completed = __atomic_load_n(&g->buckets_completed, __ATOMIC_ACQUIRE);
  stats->residual_norm = 0.0;
  if (!g->device_memory && g->finalized && g->in_flight == 0) {
    double sum = 0.0;
    for (int b = 0; b < g->plan.num_buckets; b++) {
      const float* r = g->buckets[b].residual;
      if (r)
        for (size_t i = 0; i < g->buckets[b].count; i++) sum += (double)r[i] * r[i];
    }
    stats->residual_norm = sqrt(sum);
  }
  return DA_STATUS_SUCCESS;
}
