/* The NCCL engine: device buffers, one CUDA stream per communicator. Plain C against
 * cuda_runtime_api.h and nccl.h (the kernels it needs live in gpu_compress.cu).
 *
 * Bounded failure. Host waits poll cudaEventQuery together with
 * ncclCommGetAsyncError; a NCCL error, or the deadline passing, aborts the
 * communicator (ncclCommAbort, which also ends its kernels) and fails it for good.
 * Communicators of a multi-process clique are created non-blocking
 * (ncclConfig_t.blocking = 0), so that neither init nor an enqueue can block on a
 * dead peer: an ncclInProgress answer is polled under the same deadline. The
 * in-stream signature check (verify_sizes) writes a mismatch into mapped host memory
 * that every later call and wait reads. */
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_internal.h"
#include "comm/gpu_compress.h"
#include "device/da_device.h"

typedef struct {
  ncclComm_t nccl;
  cudaStream_t stream;
  int nonblocking;
  int aborted;
  int failed;
  da_comm_error error;
  cudaEvent_t sync_event;   /* synchronize */
  cudaEvent_t caller_event; /* wait_stream */
  int64_t* signature_scratch;          /* device, 2 * DA_GPU_SIGNATURE_MAX */
  int* barrier_scratch;                /* device */
  da_gpu_signature_flag* flag;         /* mapped host memory */
  int64_t* plan_result;                /* pinned host, 2 * DA_GPU_SIGNATURE_MAX */
  /* What the in-stream checks covered, for the sentence of a mismatch. */
  char last_checked[64];
} nccl_state;

static nccl_state* state_of(da_comm* comm) { return (nccl_state*)comm->engine_state; }

/* --- Errors ------------------------------------------------------------------------ */

static da_status status_of(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return DA_STATUS_SUCCESS;
    case ncclUnhandledCudaError: return DA_STATUS_CUDA_ERROR;
    case ncclInvalidArgument:
    case ncclInvalidUsage: return DA_STATUS_INVALID_ARGUMENT;
    case ncclInternalError: return DA_STATUS_INTERNAL_ERROR;
    default: return DA_STATUS_COMM_ERROR;
  }
}

static da_status nccl_failure(ncclComm_t comm, ncclResult_t r, const char* what) {
  const char* detail = comm ? ncclGetLastError(comm) : ncclGetLastError(NULL);
  return da_error_set(status_of(r), "%s failed: %s%s%s", what, ncclGetErrorString(r),
                      detail && detail[0] ? ": " : "", detail ? detail : "");
}

static da_status cuda_failure(cudaError_t err, const char* what) {
  (void)cudaGetLastError();
  return da_error_set(err == cudaErrorMemoryAllocation ? DA_STATUS_OUT_OF_MEMORY : DA_STATUS_CUDA_ERROR,
                      "%s failed: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

/* Marks the communicator failed with the current error (first one wins) and aborts
 * NCCL, which ends its kernels and frees the peers' waits on us. */
static da_status fail(da_comm* comm, da_status st) {
  nccl_state* s = state_of(comm);
  da_comm_error_capture(&s->error, st);
  s->failed = 1;
  if (!s->aborted && s->nccl) {
    ncclCommAbort(s->nccl);
    s->aborted = 1;
  }
  return da_comm_error_raise(&s->error);
}

/* The first mismatch the in-stream checks found, as a sentence. */
static da_status mismatch_error(da_comm* comm) {
  nccl_state* s = state_of(comm);
  int field = s->flag->field;
  const char* name = field >= 0 && field < DA_SIGNATURE_FIELDS ? da_signature_field_names[field]
                                                                : "signature";
  da_error_set(DA_STATUS_INVALID_ARGUMENT,
               "a collective on the NCCL communicator: the ranks disagree on its %s: %lld on rank "
               "%d, from %lld to %lld across the %d ranks (sizes must agree; the communicator is "
               "aborted, as NCCL may have moved mismatched data)",
               name, (long long)s->flag->mine, comm->rank, (long long)s->flag->lo,
               (long long)s->flag->hi, comm->size);
  return fail(comm, DA_STATUS_INVALID_ARGUMENT);
}

/* The sticky error or a pending mismatch, checked by every entry point. */
static da_status health(da_comm* comm) {
  nccl_state* s = state_of(comm);
  if (s->failed) return da_comm_error_raise(&s->error);
  if (s->flag->mismatch) return mismatch_error(comm);
  return DA_STATUS_SUCCESS;
}

/* Current device switched to the communicator's for the call, and back. */
static int enter(const da_comm* comm) {
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  if (previous != comm->device) cudaSetDevice(comm->device);
  return previous;
}

static void leave(const da_comm* comm, int previous) {
  if (previous >= 0 && previous != comm->device) cudaSetDevice(previous);
}

static void backoff(int* spins) {
  if (++*spins < 1000) {
    sched_yield();
  } else {
    struct timespec ts = {0, 20000}; /* 20 us: the GPU and NCCL's proxy progress without us */
    nanosleep(&ts, NULL);
  }
}

/* Non-blocking communicators may answer ncclInProgress: poll until the call settles. */
static da_status settle(da_comm* comm, ncclResult_t r, const char* what) {
  nccl_state* s = state_of(comm);
  if (r == ncclSuccess) return DA_STATUS_SUCCESS;
  if (r != ncclInProgress) return fail(comm, nccl_failure(s->nccl, r, what));
  double deadline = da_now_seconds() + 1e-3 * comm->config.timeout_ms;
  int spins = 0;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t q = ncclCommGetAsyncError(s->nccl, &state);
    if (q != ncclSuccess) return fail(comm, nccl_failure(s->nccl, q, "ncclCommGetAsyncError"));
    if (state == ncclSuccess) return DA_STATUS_SUCCESS;
    if (state != ncclInProgress) return fail(comm, nccl_failure(s->nccl, state, what));
    if (da_now_seconds() > deadline)
      return fail(comm, da_error_set(DA_STATUS_COMM_ERROR,
                                     "%s on rank %d of %d did not settle within timeout_ms=%d",
                                     what, comm->rank, comm->size, comm->config.timeout_ms));
    backoff(&spins);
  }
}

/* Waits for `event` under the deadline, watching NCCL's asynchronous errors. */
static da_status wait_event(da_comm* comm, cudaEvent_t event, const char* what) {
  nccl_state* s = state_of(comm);
  double deadline = da_now_seconds() + 1e-3 * comm->config.timeout_ms;
  int spins = 0;
  for (;;) {
    cudaError_t e = cudaEventQuery(event);
    if (e == cudaSuccess) break;
    if (e != cudaErrorNotReady) return fail(comm, cuda_failure(e, what));
    ncclResult_t state = ncclSuccess;
    ncclCommGetAsyncError(s->nccl, &state);
    if (state != ncclSuccess && state != ncclInProgress)
      return fail(comm, nccl_failure(s->nccl, state, what));
    if (s->flag->mismatch) return mismatch_error(comm);
    if (da_now_seconds() > deadline)
      return fail(comm, da_error_set(DA_STATUS_COMM_ERROR,
                                     "%s on rank %d of %d did not complete within timeout_ms=%d: "
                                     "a peer died or stopped taking part; the communicator is "
                                     "aborted",
                                     what, comm->rank, comm->size, comm->config.timeout_ms));
    backoff(&spins);
  }
  return health(comm);
}

/* --- Operations ------------------------------------------------------------------------- */

static ncclDataType_t nccl_type(da_elem e) {
  switch (e) {
    case DA_ELEM_F32: return ncclFloat32;
    case DA_ELEM_F16: return ncclFloat16;
    case DA_ELEM_BF16: return ncclBfloat16;
    case DA_ELEM_F64: return ncclFloat64;
    case DA_ELEM_U8: return ncclUint8;
    case DA_ELEM_I32: return ncclInt32;
    case DA_ELEM_I64: return ncclInt64;
  }
  return ncclUint8;
}

static ncclRedOp_t nccl_op(da_comm_op op) {
  switch (op) {
    case DA_COMM_SUM: return ncclSum;
    case DA_COMM_AVG: return ncclAvg;
    case DA_COMM_MAX: return ncclMax;
    case DA_COMM_MIN: return ncclMin;
  }
  return ncclSum;
}

/* On one rank an average is the identity. NCCL 2.28.3's ncclAvg on one H100 rank
 * left the last count % 4 float32 elements of an all-reduce unwritten (seen
 * 2026-11-24, count 100003), so one rank reduces with ncclSum instead. Whether
 * ncclAvg is right on several ranks with ragged counts is for the multi-GPU tests. */
static ncclRedOp_t nccl_op_for(const da_comm* comm, da_comm_op op) {
  return comm->size == 1 && op == DA_COMM_AVG ? ncclSum : nccl_op(op);
}

static ncclResult_t issue(da_comm* comm, const da_comm_opdesc* d) {
  nccl_state* s = state_of(comm);
  ncclDataType_t t = nccl_type(d->elem);
  switch (d->kind) {
    case DA_OP_ALLREDUCE:
      return ncclAllReduce(d->send, d->recv, d->count, t, nccl_op_for(comm, d->op), s->nccl,
                           s->stream);
    case DA_OP_ALLGATHER: return ncclAllGather(d->send, d->recv, d->count, t, s->nccl, s->stream);
    case DA_OP_REDUCE_SCATTER:
      return ncclReduceScatter(d->send, d->recv, d->count, t, nccl_op_for(comm, d->op), s->nccl,
                               s->stream);
    case DA_OP_BROADCAST:
      return ncclBroadcast(d->send, d->recv, d->count, t, d->peer, s->nccl, s->stream);
    case DA_OP_SEND: return ncclSend(d->send, d->count, t, d->peer, s->nccl, s->stream);
    case DA_OP_RECV: return ncclRecv(d->recv, d->count, t, d->peer, s->nccl, s->stream);
    case DA_OP_BARRIER:
      return ncclAllReduce(s->barrier_scratch, s->barrier_scratch, 1, ncclInt32, ncclSum, s->nccl,
                           s->stream);
  }
  return ncclInvalidArgument;
}

/* Folds the signatures of many collectives into DA_SIGNATURE_FIELDS fields (a group
 * of more than fit in one check): kinds, counts, ... each hashed in order. */
static void fold_signatures(const da_comm_opdesc* ops, int n, int64_t* out, int* fields) {
  int collectives = 0;
  for (int i = 0; i < n; i++)
    if (ops[i].kind != DA_OP_SEND && ops[i].kind != DA_OP_RECV) collectives++;
  if (collectives * DA_SIGNATURE_FIELDS <= DA_GPU_SIGNATURE_MAX) {
    int j = 0;
    for (int i = 0; i < n; i++)
      if (ops[i].kind != DA_OP_SEND && ops[i].kind != DA_OP_RECV)
        da_opdesc_signature(&ops[i], out + DA_SIGNATURE_FIELDS * j++);
    *fields = DA_SIGNATURE_FIELDS * collectives;
    return;
  }
  for (int f = 0; f < DA_SIGNATURE_FIELDS; f++) out[f] = 0;
  for (int i = 0; i < n; i++) {
    if (ops[i].kind == DA_OP_SEND || ops[i].kind == DA_OP_RECV) continue;
    int64_t sig[DA_SIGNATURE_FIELDS];
    da_opdesc_signature(&ops[i], sig);
    for (int f = 0; f < DA_SIGNATURE_FIELDS; f++)
      out[f] = (int64_t)(((uint64_t)out[f] * 1099511628211ull + (uint64_t)sig[f]) & ((1ull << 62) - 1));
  }
  *fields = DA_SIGNATURE_FIELDS;
}

static da_status issue_all(da_comm* comm, const da_comm_opdesc* ops, int n, int verify) {
  nccl_state* s = state_of(comm);
  da_status st = health(comm);
  if (st != DA_STATUS_SUCCESS) return st;
  if (verify) {
    int64_t sig[DA_GPU_SIGNATURE_MAX];
    int fields = 0;
    fold_signatures(ops, n, sig, &fields);
    if (fields > 0) {
      st = da_gpu_signature_fill(s->signature_scratch, sig, fields, s->stream);
      if (st != DA_STATUS_SUCCESS) return fail(comm, st);
      st = settle(comm,
                  ncclAllReduce(s->signature_scratch, s->signature_scratch, (size_t)(2 * fields),
                                ncclInt64, ncclMax, s->nccl, s->stream),
                  "ncclAllReduce (signature check)");
      if (st != DA_STATUS_SUCCESS) return st;
      st = da_gpu_signature_check(s->signature_scratch, sig, fields, s->flag, s->stream);
      if (st != DA_STATUS_SUCCESS) return fail(comm, st);
    }
  }
  ncclResult_t r = ncclSuccess;
  if (n > 1) r = ncclGroupStart();
  for (int i = 0; i < n && r == ncclSuccess; i++) r = issue(comm, &ops[i]);
  if (n > 1) {
    ncclResult_t end = ncclGroupEnd();
    if (r == ncclSuccess) r = end;
  }
  if (r == ncclInvalidArgument && n == 1) /* refused before anything was enqueued */
    return nccl_failure(s->nccl, r, da_op_kind_name(ops[0].kind));
  return settle(comm, r, da_op_kind_name(ops[0].kind));
}

/* --- Vtable -------------------------------------------------------------------------------- */

static da_status nccl_enqueue(da_comm* comm, const da_comm_opdesc* ops, int n, int verify) {
  int previous = enter(comm);
  da_status st = issue_all(comm, ops, n, verify);
  leave(comm, previous);
  return st;
}

static da_status nccl_run(da_comm* comm, const da_comm_opdesc* ops, int n) {
  return issue_all(comm, ops, n, 0); /* inside a job: the device is set already */
}

static da_status nccl_submit(da_comm* comm, da_job_fn fn, const void* arg, size_t arg_bytes) {
  (void)arg_bytes;
  da_status st = health(comm);
  if (st != DA_STATUS_SUCCESS) return st;
  int previous = enter(comm);
  st = fn(comm, (void*)arg); /* everything the job does is stream-ordered */
  leave(comm, previous);
  return st;
}

static da_status nccl_group_start(da_comm* comm) {
  da_status st = health(comm);
  if (st != DA_STATUS_SUCCESS) return st;
  ncclResult_t r = ncclGroupStart();
  return r == ncclSuccess ? DA_STATUS_SUCCESS : nccl_failure(NULL, r, "ncclGroupStart");
}

static da_status nccl_group_end(da_comm* comm) {
  return settle(comm, ncclGroupEnd(), "ncclGroupEnd");
}

static da_status nccl_verify(da_comm* comm, const int64_t* signature, int n, int* mismatch,
                             int64_t* lo, int64_t* hi) {
  nccl_state* s = state_of(comm);
  *mismatch = -1;
  if (n < 1 || n > DA_GPU_SIGNATURE_MAX)
    return da_error_set(DA_STATUS_INTERNAL_ERROR, "plan check: %d fields exceed %d", n,
                        DA_GPU_SIGNATURE_MAX);
  da_status st = health(comm);
  if (st != DA_STATUS_SUCCESS) return st;
  int previous = enter(comm);
  st = da_gpu_signature_fill(s->signature_scratch, signature, n, s->stream);
  if (st == DA_STATUS_SUCCESS)
    st = settle(comm,
                ncclAllReduce(s->signature_scratch, s->signature_scratch, (size_t)(2 * n), ncclInt64,
                              ncclMax, s->nccl, s->stream),
                "ncclAllReduce (plan check)");
  if (st == DA_STATUS_SUCCESS) {
    cudaError_t e = cudaMemcpyAsync(s->plan_result, s->signature_scratch, sizeof(int64_t) * 2 * (size_t)n,
                                    cudaMemcpyDeviceToHost, s->stream);
    if (e == cudaSuccess) e = cudaEventRecord(s->sync_event, s->stream);
    st = e == cudaSuccess ? wait_event(comm, s->sync_event, "plan check") : fail(comm, cuda_failure(e, "plan check"));
  }
  leave(comm, previous);
  if (st != DA_STATUS_SUCCESS) return st;
  for (int i = 0; i < n; i++)
    if (s->plan_result[i] != -s->plan_result[n + i]) {
      *mismatch = i;
      *hi = s->plan_result[i];
      *lo = -s->plan_result[n + i];
      break;
    }
  return DA_STATUS_SUCCESS;
}

static da_status nccl_event_init(da_comm_event* e) {
  int previous = enter(e->comm);
  cudaEvent_t ev;
  cudaError_t err = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
  leave(e->comm, previous);
  if (err != cudaSuccess) return cuda_failure(err, "cudaEventCreateWithFlags");
  e->cuda_event = ev;
  return DA_STATUS_SUCCESS;
}

static void nccl_event_fini(da_comm_event* e) {
  if (e->cuda_event) cudaEventDestroy((cudaEvent_t)e->cuda_event);
}

static da_status nccl_event_record(da_comm_event* e) {
  da_status st = health(e->comm);
  if (st != DA_STATUS_SUCCESS) return st;
  int previous = enter(e->comm);
  cudaError_t err = cudaEventRecord((cudaEvent_t)e->cuda_event, state_of(e->comm)->stream);
  leave(e->comm, previous);
  if (err != cudaSuccess) return cuda_failure(err, "cudaEventRecord");
  e->recorded = 1;
  return DA_STATUS_SUCCESS;
}

static da_status nccl_event_query(da_comm_event* e, int* done) {
  da_comm* comm = e->comm;
  nccl_state* s = state_of(comm);
  da_status st = health(comm);
  if (st != DA_STATUS_SUCCESS) return st;
  cudaError_t err = cudaEventQuery((cudaEvent_t)e->cuda_event);
  if (err != cudaSuccess && err != cudaErrorNotReady) return fail(comm, cuda_failure(err, "event_query"));
  *done = err == cudaSuccess;
  ncclResult_t state = ncclSuccess;
  ncclCommGetAsyncError(s->nccl, &state);
  if (state != ncclSuccess && state != ncclInProgress)
    return fail(comm, nccl_failure(s->nccl, state, "event_query"));
  return health(comm);
}

static da_status nccl_event_synchronize(da_comm_event* e) {
  da_status st = health(e->comm);
  return st ? st : wait_event(e->comm, (cudaEvent_t)e->cuda_event, "event_synchronize");
}

static da_status nccl_event_stream_wait(da_comm_event* e, void* stream) {
  da_status st = health(e->comm);
  if (st != DA_STATUS_SUCCESS) return st;
  cudaError_t err = cudaStreamWaitEvent((cudaStream_t)stream, (cudaEvent_t)e->cuda_event, 0);
  return err == cudaSuccess ? DA_STATUS_SUCCESS : cuda_failure(err, "cudaStreamWaitEvent");
}

static da_status nccl_wait_stream(da_comm* comm, void* stream) {
  nccl_state* s = state_of(comm);
  da_status st = health(comm);
  if (st != DA_STATUS_SUCCESS) return st;
  if ((cudaStream_t)stream == s->stream) return DA_STATUS_SUCCESS;
  /* The event is the communicator's, so the caller's stream must belong to the
   * communicator's device (NULL: that device's legacy default stream). */
  int previous = enter(comm);
  cudaError_t err = cudaEventRecord(s->caller_event, (cudaStream_t)stream);
  if (err == cudaSuccess) err = cudaStreamWaitEvent(s->stream, s->caller_event, 0);
  leave(comm, previous);
  return err == cudaSuccess ? DA_STATUS_SUCCESS : cuda_failure(err, "wait_stream");
}

static da_status nccl_synchronize(da_comm* comm) {
  nccl_state* s = state_of(comm);
  da_status st = health(comm);
  if (st != DA_STATUS_SUCCESS) return st;
  int previous = enter(comm);
  cudaError_t err = cudaEventRecord(s->sync_event, s->stream);
  st = err == cudaSuccess ? wait_event(comm, s->sync_event, "synchronize")
                          : fail(comm, cuda_failure(err, "cudaEventRecord"));
  leave(comm, previous);
  return st;
}

static da_status nccl_copy(da_comm* comm, void* dst, const void* src, size_t bytes) {
  if (dst == src || bytes == 0) return DA_STATUS_SUCCESS;
  cudaError_t err = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, state_of(comm)->stream);
  return err == cudaSuccess ? DA_STATUS_SUCCESS : cuda_failure(err, "cudaMemcpyAsync (bucket copy)");
}

static da_status nccl_check_buffer(da_comm* comm, const void* p, const char* what) {
  (void)comm;
  struct cudaPointerAttributes attr;
  cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s=%p is not memory CUDA knows: %s", what, p,
                        cudaGetErrorString(err));
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "%s=%p is host memory; the NCCL engine moves device memory", what, p);
  return DA_STATUS_SUCCESS;
}

static void free_state(da_comm* comm) {
  nccl_state* s = state_of(comm);
  if (s == NULL) return;
  int previous = enter(comm);
  if (s->nccl && !s->aborted) {
    if (s->failed)
      ncclCommAbort(s->nccl);
    else
      ncclCommDestroy(s->nccl);
  }
  if (s->stream) cudaStreamDestroy(s->stream);
  if (s->sync_event) cudaEventDestroy(s->sync_event);
  if (s->caller_event) cudaEventDestroy(s->caller_event);
  if (s->signature_scratch) cudaFree(s->signature_scratch);
  if (s->barrier_scratch) cudaFree(s->barrier_scratch);
  if (s->flag) cudaFreeHost(s->flag);
  if (s->plan_result) cudaFreeHost(s->plan_result);
  leave(comm, previous);
  free(s);
  comm->engine_state = NULL;
}

static da_status nccl_destroy(da_comm* comm) {
  nccl_state* s = state_of(comm);
  da_status st = DA_STATUS_SUCCESS;
  if (!s->failed) st = nccl_synchronize(comm);
  if (st == DA_STATUS_SUCCESS && s->failed) st = da_comm_error_raise(&s->error);
  free_state(comm);
  free(comm);
  return st;
}

static const da_comm_vtable nccl_vtable = {
    "nccl",
    nccl_destroy,
    nccl_enqueue,
    nccl_run,
    nccl_submit,
    nccl_group_start,
    nccl_group_end,
    nccl_verify,
    nccl_event_init,
    nccl_event_fini,
    nccl_event_record,
    nccl_event_query,
    nccl_event_synchronize,
    nccl_event_stream_wait,
    nccl_wait_stream,
    nccl_synchronize,
    nccl_copy,
    nccl_check_buffer,
};

/* --- Creation ---------------------------------------------------------------------------------- */

/* The handle and the per-communicator CUDA resources on `device` (current). */
static da_status new_comm(const da_comm_config* c, int device, da_comm** out) {
  da_comm* comm = (da_comm*)calloc(1, sizeof *comm);
  nccl_state* s = (nccl_state*)calloc(1, sizeof *s);
  if (comm == NULL || s == NULL) {
    free(comm);
    free(s);
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "nccl engine: no memory for the handle");
  }
  comm->vt = &nccl_vtable;
  comm->engine = DA_COMM_ENGINE_NCCL;
  comm->config = *c;
  comm->device = device;
  comm->engine_state = s;
  cudaError_t err = cudaSetDevice(device);
  if (err == cudaSuccess) err = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
  if (err == cudaSuccess) err = cudaEventCreateWithFlags(&s->sync_event, cudaEventDisableTiming);
  if (err == cudaSuccess) err = cudaEventCreateWithFlags(&s->caller_event, cudaEventDisableTiming);
  if (err == cudaSuccess)
    err = cudaMalloc((void**)&s->signature_scratch, sizeof(int64_t) * 2 * DA_GPU_SIGNATURE_MAX);
  if (err == cudaSuccess) err = cudaMalloc((void**)&s->barrier_scratch, sizeof(int));
  if (err == cudaSuccess)
    err = cudaHostAlloc((void**)&s->flag, sizeof(da_gpu_signature_flag), cudaHostAllocMapped);
  if (err == cudaSuccess)
    err = cudaHostAlloc((void**)&s->plan_result, sizeof(int64_t) * 2 * DA_GPU_SIGNATURE_MAX,
                        cudaHostAllocDefault);
  if (err == cudaSuccess) err = cudaMemset(s->barrier_scratch, 0, sizeof(int));
  if (err != cudaSuccess) {
    da_status st = cuda_failure(err, "nccl engine: creating the stream, events and scratch");
    free_state(comm);
    free(comm);
    return st;
  }
  memset((void*)s->flag, 0, sizeof *s->flag);
  comm->stream = s->stream;
  *out = comm;
  return DA_STATUS_SUCCESS;
}

da_status da_comm_nccl_get_id(da_comm_nccl_id* id) {
  da_error_clear();
  if (id == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "nccl_get_id: id must not be NULL");
  _Static_assert(sizeof(da_comm_nccl_id) == sizeof(ncclUniqueId), "da_comm_nccl_id is ncclUniqueId");
  ncclUniqueId u;
  ncclResult_t r = ncclGetUniqueId(&u);
  if (r != ncclSuccess) return nccl_failure(NULL, r, "ncclGetUniqueId");
  memcpy(id->bytes, u.internal, sizeof u.internal);
  return DA_STATUS_SUCCESS;
}

static da_status check_device(int device, const char* fn) {
  int count = 0;
  da_status st = da_device_count(&count);
  if (st != DA_STATUS_SUCCESS) return da_error_wrap(st, "%s", fn);
  if (device < 0 || device >= count)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: device=%d is outside [0, %d)", fn, device,
                        count);
  return DA_STATUS_SUCCESS;
}

da_status da_comm_create_nccl_local(const da_comm_config* config, int ndev, const int* devices,
                                    da_comm** comms) {
  static const char fn[] = "comm_create_nccl_local";
  da_error_clear();
  if (comms == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: comms must not be NULL", fn);
  if (ndev < 1 || ndev > 1024)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: ndev=%d must be in [1, 1024]", fn, ndev);
  for (int i = 0; i < ndev; i++) comms[i] = NULL;
  da_comm_config c = config ? *config : da_comm_config_default();
  da_status st = da_comm_check_config(&c, fn);
  if (st != DA_STATUS_SUCCESS) return st;
  int* list = (int*)malloc(sizeof(int) * (size_t)ndev);
  ncclComm_t* ncomms = (ncclComm_t*)calloc((size_t)ndev, sizeof(ncclComm_t));
  if (list == NULL || ncomms == NULL) {
    free(list);
    free(ncomms);
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "%s: no memory", fn);
  }
  for (int i = 0; i < ndev && st == DA_STATUS_SUCCESS; i++) {
    list[i] = devices ? devices[i] : i;
    st = check_device(list[i], fn);
    for (int j = 0; j < i && st == DA_STATUS_SUCCESS; j++)
      if (list[j] == list[i])
        st = da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: devices[%d] and devices[%d] are both %d", fn,
                          j, i, list[i]);
  }
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  if (st == DA_STATUS_SUCCESS) {
    ncclResult_t r = ncclCommInitAll(ncomms, ndev, list);
    if (r != ncclSuccess) st = nccl_failure(NULL, r, "ncclCommInitAll");
  }
  for (int i = 0; i < ndev && st == DA_STATUS_SUCCESS; i++) {
    st = new_comm(&c, list[i], &comms[i]);
    if (st == DA_STATUS_SUCCESS) {
      comms[i]->rank = i;
      comms[i]->size = ndev;
      state_of(comms[i])->nccl = ncomms[i];
      ncomms[i] = NULL;
    }
  }
  if (st != DA_STATUS_SUCCESS) {
    char sentence[512];
    snprintf(sentence, sizeof sentence, "%s", da_last_error());
    for (int i = 0; i < ndev; i++) {
      if (ncomms[i]) ncclCommDestroy(ncomms[i]);
      if (comms[i]) da_comm_destroy(comms[i]);
      comms[i] = NULL;
    }
    da_error_set(st, "%s", sentence);
  }
  if (previous >= 0) cudaSetDevice(previous);
  free(list);
  free(ncomms);
  return st;
}

da_status da_comm_create_nccl_rank(const da_comm_config* config, const da_comm_nccl_id* id, int rank,
                                   int size, int device, da_comm** comm) {
  static const char fn[] = "comm_create_nccl_rank";
  da_error_clear();
  if (comm == NULL || id == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: comm and id must not be NULL", fn);
  *comm = NULL;
  if (size < 1 || rank < 0 || rank >= size)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: rank=%d must be in [0, size=%d)", fn, rank, size);
  da_comm_config c = config ? *config : da_comm_config_default();
  da_status st = da_comm_check_config(&c, fn);
  if (st == DA_STATUS_SUCCESS) st = check_device(device, fn);
  if (st != DA_STATUS_SUCCESS) return st;
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  da_comm* k = NULL;
  st = new_comm(&c, device, &k);
  if (st != DA_STATUS_SUCCESS) {
    if (previous >= 0) cudaSetDevice(previous);
    return st;
  }
  k->rank = rank;
  k->size = size;
  nccl_state* s = state_of(k);
  s->nonblocking = 1;
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  ncclUniqueId u;
  memcpy(u.internal, id->bytes, sizeof u.internal);
  ncclResult_t r = ncclCommInitRankConfig(&s->nccl, size, u, rank, &cfg);
  if (r != ncclSuccess && r != ncclInProgress) {
    st = nccl_failure(NULL, r, "ncclCommInitRankConfig");
    s->nccl = NULL;
  } else {
    char what[64];
    snprintf(what, sizeof what, "ncclCommInitRankConfig (rank %d of %d)", rank, size);
    st = settle(k, r, what);
  }
  if (previous >= 0) cudaSetDevice(previous);
  if (st != DA_STATUS_SUCCESS) {
    char sentence[512];
    snprintf(sentence, sizeof sentence, "%s", da_last_error());
    free_state(k);
    free(k);
    return da_error_set(st, "%s", sentence);
  }
  *comm = k;
  return DA_STATUS_SUCCESS;
}
