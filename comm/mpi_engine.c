/* The MPI engine: host buffers over Open MPI.
 *
 * A worker thread per communicator runs jobs in order (the "communication stream").
 * Every MPI operation is non-blocking (MPI_Iallreduce, MPI_Ibcast, ...), completed
 * with MPI_Testall polled under a deadline, so a dead or silent peer ends in
 * DA_STATUS_COMM_ERROR after timeout_ms instead of a hang. The communicator is a
 * duplicate with MPI_ERRORS_RETURN, so MPI reports errors instead of aborting, and
 * the library never calls MPI_Abort.
 *
 * Also here: the NCCL bootstrap over MPI (da_comm_create_nccl_mpi), so the NCCL engine
 * itself does not link libmpi. */
#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_internal.h"
#include "comm/compress.h"
#include "device/da_device.h"

#define P2P_TAG 0x6da

typedef struct mpi_job {
  struct mpi_job* next;
  uint64_t seq;
  int verify;
  int n_ops;
  da_comm_opdesc* ops;
  da_job_fn fn;
  void* arg;
} mpi_job;

typedef struct {
  MPI_Comm comm;
  MPI_Datatype half; /* 2-byte elements (binary16 and bfloat16) */
  MPI_Op half_ops[2][3]; /* [f16, bf16][sum, max, min] */
  int have_types;

  pthread_t worker;
  int worker_started;
  pthread_mutex_t lock;
  pthread_cond_t wake; /* the worker: a job arrived or stop */
  pthread_cond_t done; /* waiters: a job completed */
  mpi_job *head, *tail;
  uint64_t enqueued, completed;
  double last_progress;
  int stop;

  da_comm_error error; /* first unreported (or fatal) error */
  uint64_t error_seq;
  int fatal;

  int group_depth;
  int group_verify;
  da_comm_opdesc* group_ops;
  int group_n, group_cap;
} mpi_state;

static mpi_state* state_of(da_comm* comm) { return (mpi_state*)comm->engine_state; }

/* MPI_Init_thread done by this library (da_comm_mpi_finalize undoes it). */
static int g_mpi_initialized_here;

/* --- Helpers shared with the NCCL bootstrap ------------------------------------------- */

static da_status mpi_failure(int rc, const char* what) {
  char text[MPI_MAX_ERROR_STRING] = "";
  int len = 0, cls = 0;
  MPI_Error_class(rc, &cls);
  MPI_Error_string(rc, text, &len);
  if (cls == MPI_ERR_TRUNCATE)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "%s: a message was longer than the receive count (%s)", what, text);
  return da_error_set(DA_STATUS_COMM_ERROR, "%s failed: %s", what, text);
}

/* Completes n requests, polling until `deadline`. Busy-polls with sched_yield, as
 * MPI's own blocking calls do: non-blocking collectives progress only inside MPI
 * calls, and a sleep would stall large transfers. */
static da_status wait_requests(MPI_Request* requests, int n, double deadline, int timeout_ms,
                               const char* what, int rank, int size) {
  if (n == 0) return DA_STATUS_SUCCESS;
  MPI_Status statuses[8];
  MPI_Status* st = n <= 8 ? statuses : (MPI_Status*)malloc(sizeof(MPI_Status) * (size_t)n);
  if (st == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "%s: no memory for %d statuses", what, n);
  da_status result = DA_STATUS_SUCCESS;
  for (;;) {
    int flag = 0;
    int rc = MPI_Testall(n, requests, &flag, st);
    if (rc != MPI_SUCCESS) {
      if (rc == MPI_ERR_IN_STATUS)
        for (int i = 0; i < n; i++)
          if (st[i].MPI_ERROR != MPI_SUCCESS && st[i].MPI_ERROR != MPI_ERR_PENDING) {
            rc = st[i].MPI_ERROR;
            break;
          }
      result = mpi_failure(rc, what);
      break;
    }
    if (flag) break;
    if (da_now_seconds() > deadline) {
      result = da_error_set(DA_STATUS_COMM_ERROR,
                            "%s on rank %d of %d did not complete within timeout_ms=%d: a peer "
                            "died or stopped taking part; the communicator is unusable",
                            what, rank, size, timeout_ms);
      break;
    }
    sched_yield();
  }
  if (st != statuses) free(st);
  return result;
}

static double deadline_of(const da_comm_config* config) {
  return da_now_seconds() + 1e-3 * (double)config->timeout_ms;
}

/* Initialises MPI if needed (MPI_THREAD_MULTIPLE) and checks its thread level. */
static da_status ensure_mpi(const char* fn) {
  int initialized = 0, finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return da_error_set(DA_STATUS_NOT_SUPPORTED, "%s: MPI is already finalized", fn);
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS) return mpi_failure(rc, "MPI_Init_thread");
    g_mpi_initialized_here = 1;
  }
  int level = 0;
  MPI_Query_thread(&level);
  if (level < MPI_THREAD_MULTIPLE)
    return da_error_set(DA_STATUS_NOT_SUPPORTED,
                        "%s: MPI runs at thread level %d, the engine needs MPI_THREAD_MULTIPLE (%d): "
                        "initialise MPI with MPI_Init_thread(..., MPI_THREAD_MULTIPLE, ...)",
                        fn, level, MPI_THREAD_MULTIPLE);
  return DA_STATUS_SUCCESS;
}

/* *dup = a duplicate of config->mpi_comm (or MPI_COMM_WORLD) with MPI_ERRORS_RETURN,
 * made with MPI_Comm_idup under the deadline. The base's error handler is switched to
 * MPI_ERRORS_RETURN for the call and restored. */
static da_status duplicate_base(const da_comm_config* config, MPI_Comm* dup, const char* fn) {
  MPI_Comm base = config->mpi_comm ? *(const MPI_Comm*)config->mpi_comm : MPI_COMM_WORLD;
  MPI_Errhandler saved;
  MPI_Comm_get_errhandler(base, &saved);
  MPI_Comm_set_errhandler(base, MPI_ERRORS_RETURN);
  int rank = 0, size = 1;
  MPI_Comm_rank(base, &rank);
  MPI_Comm_size(base, &size);
  MPI_Request request;
  char what[96];
  snprintf(what, sizeof what, "%s: MPI_Comm_idup", fn);
  /* MPI writes the new handle when the idup completes, maybe after a timeout: the
   * holder lives on the heap and is leaked in that case. */
  MPI_Comm* holder = (MPI_Comm*)malloc(sizeof(MPI_Comm));
  da_status st;
  if (holder == NULL) {
    st = da_error_set(DA_STATUS_OUT_OF_MEMORY, "%s: no memory", what);
  } else {
    int rc = MPI_Comm_idup(base, holder, &request);
    st = rc == MPI_SUCCESS ? wait_requests(&request, 1, deadline_of(config), config->timeout_ms,
                                           what, rank, size)
                           : mpi_failure(rc, what);
  }
  MPI_Comm_set_errhandler(base, saved);
  MPI_Errhandler_free(&saved);
  if (st == DA_STATUS_SUCCESS) {
    *dup = *holder;
    free(holder);
    MPI_Comm_set_errhandler(*dup, MPI_ERRORS_RETURN);
  } else if (holder) {
    DA_ABANDON(holder);
  }
  return st;
}

/* --- Reductions on 2-byte floats --------------------------------------------------------- */

#define DEFINE_HALF_OP(name, elem, op)                                         \
  static void name(void* in, void* inout, int* len, MPI_Datatype* type) {      \
    (void)type;                                                                \
    da_cx_half_reduce(elem, op, (const uint16_t*)in, (uint16_t*)inout, (size_t)*len); \
  }
DEFINE_HALF_OP(f16_sum, DA_DTYPE_F16, 0)
DEFINE_HALF_OP(f16_max, DA_DTYPE_F16, 1)
DEFINE_HALF_OP(f16_min, DA_DTYPE_F16, 2)
DEFINE_HALF_OP(bf16_sum, DA_DTYPE_BF16, 0)
DEFINE_HALF_OP(bf16_max, DA_DTYPE_BF16, 1)
DEFINE_HALF_OP(bf16_min, DA_DTYPE_BF16, 2)

static da_status create_types(mpi_state* s) {
  MPI_User_function* fns[2][3] = {{f16_sum, f16_max, f16_min}, {bf16_sum, bf16_max, bf16_min}};
  if (MPI_Type_contiguous(2, MPI_BYTE, &s->half) != MPI_SUCCESS ||
      MPI_Type_commit(&s->half) != MPI_SUCCESS)
    return da_error_set(DA_STATUS_INTERNAL_ERROR, "mpi engine: cannot create the 2-byte datatype");
  for (int t = 0; t < 2; t++)
    for (int o = 0; o < 3; o++)
      if (MPI_Op_create(fns[t][o], 1, &s->half_ops[t][o]) != MPI_SUCCESS)
        return da_error_set(DA_STATUS_INTERNAL_ERROR, "mpi engine: cannot create a 2-byte reduction");
  s->have_types = 1;
  return DA_STATUS_SUCCESS;
}

static MPI_Datatype mpi_type(mpi_state* s, da_elem e) {
  switch (e) {
    case DA_ELEM_F32: return MPI_FLOAT;
    case DA_ELEM_F64: return MPI_DOUBLE;
    case DA_ELEM_F16:
    case DA_ELEM_BF16: return s->half;
    case DA_ELEM_U8: return MPI_UNSIGNED_CHAR;
    case DA_ELEM_I32: return MPI_INT32_T;
    case DA_ELEM_I64: return MPI_INT64_T;
  }
  return MPI_DATATYPE_NULL;
}

static MPI_Op mpi_op(mpi_state* s, da_elem e, da_comm_op op) {
  int o = op == DA_COMM_MAX ? 1 : op == DA_COMM_MIN ? 2 : 0; /* AVG: sum, then scale */
  if (e == DA_ELEM_F16) return s->half_ops[0][o];
  if (e == DA_ELEM_BF16) return s->half_ops[1][o];
  return o == 1 ? MPI_MAX : o == 2 ? MPI_MIN : MPI_SUM;
}

/* --- Running operations (worker context) -------------------------------------------------- */

/* Per-operation state between start and finish. */
typedef struct {
  void* temp; /* in-place reduce-scatter: result lands here first */
} op_extra;

static da_status start_op(da_comm* comm, const da_comm_opdesc* d, MPI_Request* request,
                          op_extra* extra) {
  mpi_state* s = state_of(comm);
  MPI_Datatype type = mpi_type(s, d->elem);
  size_t esz = da_elem_size(d->elem);
  int count = (int)d->count;
  int rc = MPI_SUCCESS;
  extra->temp = NULL;
  switch (d->kind) {
    case DA_OP_ALLREDUCE:
      rc = MPI_Iallreduce(d->send == d->recv ? MPI_IN_PLACE : d->send, d->recv, count, type,
                          mpi_op(s, d->elem, d->op), s->comm, request);
      break;
    case DA_OP_ALLGATHER: {
      const char* own = (const char*)d->recv + (size_t)comm->rank * d->count * esz;
      rc = MPI_Iallgather(d->send == own ? MPI_IN_PLACE : d->send, count, type, d->recv, count,
                          type, s->comm, request);
      break;
    }
    case DA_OP_REDUCE_SCATTER: {
      const char* own = (const char*)d->send + (size_t)comm->rank * d->count * esz;
      void* target = d->recv;
      if ((const char*)d->recv == own && d->count > 0) {
        extra->temp = malloc(d->count * esz);
        if (extra->temp == NULL)
          return da_error_set(DA_STATUS_OUT_OF_MEMORY, "reduce-scatter: no memory for %zu bytes",
                              d->count * esz);
        target = extra->temp;
      }
      rc = MPI_Ireduce_scatter_block(d->send, target, count, type, mpi_op(s, d->elem, d->op),
                                     s->comm, request);
      break;
    }
    case DA_OP_BROADCAST:
      if (comm->rank == d->peer && d->send != d->recv && d->count > 0)
        memcpy(d->recv, d->send, d->count * esz);
      rc = MPI_Ibcast(d->recv, count, type, d->peer, s->comm, request);
      break;
    case DA_OP_SEND:
      rc = MPI_Isend(d->send, count, type, d->peer, P2P_TAG, s->comm, request);
      break;
    case DA_OP_RECV:
      rc = MPI_Irecv(d->recv, count, type, d->peer, P2P_TAG, s->comm, request);
      break;
    case DA_OP_BARRIER: rc = MPI_Ibarrier(s->comm, request); break;
  }
  if (rc != MPI_SUCCESS) {
    free(extra->temp);
    extra->temp = NULL;
    return mpi_failure(rc, da_op_kind_name(d->kind));
  }
  return DA_STATUS_SUCCESS;
}

static void finish_op(da_comm* comm, const da_comm_opdesc* d, op_extra* extra) {
  if (extra->temp) {
    memcpy(d->recv, extra->temp, d->count * da_elem_size(d->elem));
    free(extra->temp);
    extra->temp = NULL;
  }
  if (d->op == DA_COMM_AVG && (d->kind == DA_OP_ALLREDUCE || d->kind == DA_OP_REDUCE_SCATTER))
    da_host_scale(d->recv, d->count, d->elem, 1.0 / (double)comm->size);
}

/* Signature exchange: one MPI_MAX all-reduce over (s, -s) gives every field's range.
 * Buffers handed to non-blocking MPI calls live on the heap and are leaked if the call
 * fails: MPI may still write into them later. */
static da_status exchange_signature(da_comm* comm, const int64_t* signature, int n, int* mismatch,
                                    int64_t* lo, int64_t* hi) {
  mpi_state* s = state_of(comm);
  *mismatch = -1;
  int64_t* buf = (int64_t*)malloc(sizeof(int64_t) * 2 * (size_t)n);
  if (buf == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "signature check: no memory");
  for (int i = 0; i < n; i++) {
    buf[i] = signature[i];
    buf[n + i] = -signature[i];
  }
  MPI_Request request;
  int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, 2 * n, MPI_INT64_T, MPI_MAX, s->comm, &request);
  da_status st = rc == MPI_SUCCESS
                     ? wait_requests(&request, 1, deadline_of(&comm->config),
                                     comm->config.timeout_ms, "signature check (all-reduce)",
                                     comm->rank, comm->size)
                     : mpi_failure(rc, "signature check");
  if (st != DA_STATUS_SUCCESS) {
    DA_ABANDON(buf);
    return st;
  }
  for (int i = 0; i < n; i++) {
    if (buf[i] != -buf[n + i]) {
      *mismatch = i;
      *hi = buf[i];
      *lo = -buf[n + i];
      break;
    }
  }
  free(buf);
  return DA_STATUS_SUCCESS;
}

static da_status run_ops(da_comm* comm, const da_comm_opdesc* ops, int n, int verify) {
  for (int i = 0; i < n; i++)
    if (ops[i].count > (size_t)INT_MAX)
      return da_error_set(DA_STATUS_NOT_SUPPORTED,
                          "%s: count=%zu exceeds INT_MAX elements, the MPI engine's limit per call",
                          da_op_kind_name(ops[i].kind), ops[i].count);
  if (verify) {
    int collectives = 0;
    for (int i = 0; i < n; i++)
      if (ops[i].kind != DA_OP_SEND && ops[i].kind != DA_OP_RECV) collectives++;
    if (collectives > 0) {
      int64_t stack[4 * DA_SIGNATURE_FIELDS];
      int64_t* sig = collectives <= 4 ? stack
                                      : (int64_t*)malloc(sizeof(int64_t) * DA_SIGNATURE_FIELDS *
                                                         (size_t)collectives);
      if (sig == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "signature: no memory");
      int j = 0;
      for (int i = 0; i < n; i++)
        if (ops[i].kind != DA_OP_SEND && ops[i].kind != DA_OP_RECV)
          da_opdesc_signature(&ops[i], sig + DA_SIGNATURE_FIELDS * j++);
      int mismatch = -1;
      int64_t lo = 0, hi = 0;
      da_status st = exchange_signature(comm, sig, DA_SIGNATURE_FIELDS * collectives, &mismatch,
                                        &lo, &hi);
      int64_t mine = mismatch >= 0 ? sig[mismatch] : 0;
      if (sig != stack) free(sig);
      if (st != DA_STATUS_SUCCESS) return st;
      if (mismatch >= 0) {
        const da_comm_opdesc* d = &ops[0];
        for (int i = 0, c = 0; i < n; i++)
          if (ops[i].kind != DA_OP_SEND && ops[i].kind != DA_OP_RECV) {
            if (c++ == mismatch / DA_SIGNATURE_FIELDS) {
              d = &ops[i];
              break;
            }
          }
        return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                            "%s: the ranks disagree on its %s: %lld on rank %d, from %lld to %lld "
                            "across the %d ranks (nothing was sent; sizes must agree)",
                            da_op_kind_name(d->kind),
                            da_signature_field_names[mismatch % DA_SIGNATURE_FIELDS],
                            (long long)mine, comm->rank, (long long)lo, (long long)hi, comm->size);
      }
    }
  }
  MPI_Request stack_requests[4];
  op_extra stack_extra[4];
  MPI_Request* requests = n <= 4 ? stack_requests : (MPI_Request*)malloc(sizeof(MPI_Request) * (size_t)n);
  op_extra* extra = n <= 4 ? stack_extra : (op_extra*)calloc((size_t)n, sizeof(op_extra));
  if (requests == NULL || extra == NULL) {
    if (requests != stack_requests) free(requests);
    if (extra != stack_extra) free(extra);
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "mpi engine: no memory for %d requests", n);
  }
  da_status st = DA_STATUS_SUCCESS;
  int started = 0;
  for (; started < n && st == DA_STATUS_SUCCESS; started++) {
    st = start_op(comm, &ops[started], &requests[started], &extra[started]);
    if (st != DA_STATUS_SUCCESS) break;
  }
  if (st == DA_STATUS_SUCCESS) {
    char what[64];
    snprintf(what, sizeof what, "%s%s", da_op_kind_name(ops[0].kind), n > 1 ? " (group)" : "");
    st = wait_requests(requests, n, deadline_of(&comm->config), comm->config.timeout_ms, what,
                       comm->rank, comm->size);
  }
  if (st == DA_STATUS_SUCCESS) {
    for (int i = 0; i < n; i++) finish_op(comm, &ops[i], &extra[i]);
  }
  /* On failure, requests that started stay in flight (an active collective request may
   * not be freed): their temporary buffers are leaked with them. */
  if (st != DA_STATUS_SUCCESS)
    for (int i = 0; i < started; i++)
      if (extra[i].temp) DA_ABANDON(extra[i].temp);
  if (requests != stack_requests) free(requests);
  if (extra != stack_extra) free(extra);
  return st;
}

/* --- Worker ------------------------------------------------------------------------------ */

static void* worker_main(void* arg) {
  da_comm* comm = (da_comm*)arg;
  mpi_state* s = state_of(comm);
  pthread_mutex_lock(&s->lock);
  for (;;) {
    while (s->head == NULL && !s->stop) pthread_cond_wait(&s->wake, &s->lock);
    if (s->head == NULL) break;
    mpi_job* job = s->head;
    s->head = job->next;
    if (s->head == NULL) s->tail = NULL;
    int skip = s->fatal;
    pthread_mutex_unlock(&s->lock);

    da_status st = DA_STATUS_SUCCESS;
    if (!skip) {
      da_error_clear();
      st = job->fn ? job->fn(comm, job->arg) : run_ops(comm, job->ops, job->n_ops, job->verify);
    }

    pthread_mutex_lock(&s->lock);
    if (st != DA_STATUS_SUCCESS && s->error.status == DA_STATUS_SUCCESS) {
      da_comm_error_capture(&s->error, st);
      s->error_seq = job->seq;
    }
    if (st != DA_STATUS_SUCCESS && st != DA_STATUS_INVALID_ARGUMENT) s->fatal = 1;
    s->completed = job->seq;
    s->last_progress = da_now_seconds();
    pthread_cond_broadcast(&s->done);
    free(job);
  }
  pthread_mutex_unlock(&s->lock);
  return NULL;
}

/* Takes the lock. Returns the recorded error if it concerns work up to `seq`; a
 * non-fatal one is reported once. */
static da_status take_error_locked(mpi_state* s, uint64_t seq) {
  if (s->error.status == DA_STATUS_SUCCESS) return DA_STATUS_SUCCESS;
  if (!s->fatal && s->error_seq > seq) return DA_STATUS_SUCCESS;
  da_status st = da_comm_error_raise(&s->error);
  if (!s->fatal) {
    s->error.status = DA_STATUS_SUCCESS;
    s->error.message[0] = '\0';
  }
  return st;
}

static da_status wait_seq(da_comm* comm, uint64_t seq, const char* what) {
  mpi_state* s = state_of(comm);
  /* The worker bounds every operation by the timeout; this guard only catches a job
   * that never returns (a bug), so it is generous. */
  double stall_limit = 2e-3 * comm->config.timeout_ms + 30.0;
  pthread_mutex_lock(&s->lock);
  while (s->completed < seq && !s->fatal) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&s->done, &s->lock, &ts);
    if (s->completed < seq && da_now_seconds() - s->last_progress > stall_limit) {
      pthread_mutex_unlock(&s->lock);
      return da_error_set(DA_STATUS_INTERNAL_ERROR,
                          "%s: the MPI engine's worker made no progress for %.0f s", what,
                          stall_limit);
    }
  }
  da_status st = take_error_locked(s, seq);
  pthread_mutex_unlock(&s->lock);
  return st;
}

static da_status push_job(da_comm* comm, mpi_job* job) {
  mpi_state* s = state_of(comm);
  pthread_mutex_lock(&s->lock);
  if (s->fatal) {
    da_status st = da_comm_error_raise(&s->error);
    pthread_mutex_unlock(&s->lock);
    free(job);
    return st;
  }
  if (s->enqueued == s->completed) s->last_progress = da_now_seconds();
  job->seq = ++s->enqueued;
  job->next = NULL;
  if (s->tail)
    s->tail->next = job;
  else
    s->head = job;
  s->tail = job;
  pthread_cond_signal(&s->wake);
  pthread_mutex_unlock(&s->lock);
  return DA_STATUS_SUCCESS;
}

static mpi_job* new_job(int n_ops, size_t arg_bytes) {
  size_t bytes = sizeof(mpi_job) + sizeof(da_comm_opdesc) * (size_t)n_ops + arg_bytes + 16;
  mpi_job* job = (mpi_job*)calloc(1, bytes);
  if (job == NULL) return NULL;
  job->ops = (da_comm_opdesc*)(job + 1);
  job->n_ops = n_ops;
  /* arg after the ops, 16-byte aligned */
  uintptr_t p = (uintptr_t)(job->ops + n_ops);
  job->arg = (void*)((p + 15) & ~(uintptr_t)15);
  return job;
}

/* --- Vtable -------------------------------------------------------------------------------- */

static da_status mpi_enqueue(da_comm* comm, const da_comm_opdesc* ops, int n, int verify) {
  mpi_state* s = state_of(comm);
  for (int i = 0; i < n; i++)
    if (ops[i].count > (size_t)INT_MAX)
      return da_error_set(DA_STATUS_NOT_SUPPORTED,
                          "%s: count=%zu exceeds INT_MAX elements, the MPI engine's limit per call",
                          da_op_kind_name(ops[i].kind), ops[i].count);
  if (s->group_depth > 0) {
    if (s->group_n + n > s->group_cap) {
      int cap = s->group_cap ? 2 * s->group_cap : 8;
      while (cap < s->group_n + n) cap *= 2;
      da_comm_opdesc* grown = (da_comm_opdesc*)realloc(s->group_ops, sizeof(da_comm_opdesc) * (size_t)cap);
      if (grown == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "group: no memory");
      s->group_ops = grown;
      s->group_cap = cap;
    }
    memcpy(s->group_ops + s->group_n, ops, sizeof(da_comm_opdesc) * (size_t)n);
    s->group_n += n;
    s->group_verify |= verify;
    return DA_STATUS_SUCCESS;
  }
  mpi_job* job = new_job(n, 0);
  if (job == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "mpi engine: no memory for a job");
  memcpy(job->ops, ops, sizeof(da_comm_opdesc) * (size_t)n);
  job->verify = verify;
  return push_job(comm, job);
}

static da_status mpi_run(da_comm* comm, const da_comm_opdesc* ops, int n) {
  return run_ops(comm, ops, n, 0);
}

static da_status mpi_submit(da_comm* comm, da_job_fn fn, const void* arg, size_t arg_bytes) {
  mpi_job* job = new_job(0, arg_bytes);
  if (job == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "mpi engine: no memory for a job");
  job->fn = fn;
  if (arg_bytes) memcpy(job->arg, arg, arg_bytes);
  return push_job(comm, job);
}

static da_status mpi_group_start(da_comm* comm) {
  state_of(comm)->group_depth++;
  return DA_STATUS_SUCCESS;
}

static da_status mpi_group_end(da_comm* comm) {
  mpi_state* s = state_of(comm);
  if (s->group_depth == 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "group_end: no group_start is open");
  if (--s->group_depth > 0 || s->group_n == 0) return DA_STATUS_SUCCESS;
  int n = s->group_n, verify = s->group_verify;
  s->group_n = 0;
  s->group_verify = 0;
  return mpi_enqueue(comm, s->group_ops, n, verify);
}

typedef struct {
  const int64_t* signature;
  int n;
  int* mismatch;
  int64_t *lo, *hi;
} verify_args;

static da_status verify_job(da_comm* comm, void* arg) {
  verify_args* a = (verify_args*)arg;
  return exchange_signature(comm, a->signature, a->n, a->mismatch, a->lo, a->hi);
}

static da_status mpi_verify(da_comm* comm, const int64_t* signature, int n, int* mismatch,
                            int64_t* lo, int64_t* hi) {
  /* The job writes through these pointers; wait_seq returns only once it has run
   * (the worker bounds it), so the caller's storage outlives it. */
  verify_args a = {signature, n, mismatch, lo, hi};
  *mismatch = -1;
  da_status st = mpi_submit(comm, verify_job, &a, sizeof a);
  if (st != DA_STATUS_SUCCESS) return st;
  mpi_state* s = state_of(comm);
  pthread_mutex_lock(&s->lock);
  uint64_t seq = s->enqueued;
  pthread_mutex_unlock(&s->lock);
  return wait_seq(comm, seq, "plan check");
}

static da_status mpi_event_init(da_comm_event* e) {
  (void)e;
  return DA_STATUS_SUCCESS;
}
static void mpi_event_fini(da_comm_event* e) { (void)e; }

static da_status mpi_event_record(da_comm_event* e) {
  mpi_state* s = state_of(e->comm);
  pthread_mutex_lock(&s->lock);
  e->seq = s->enqueued;
  e->recorded = 1;
  da_status st = s->fatal ? da_comm_error_raise(&s->error) : DA_STATUS_SUCCESS;
  pthread_mutex_unlock(&s->lock);
  return st;
}

static da_status mpi_event_query(da_comm_event* e, int* done) {
  mpi_state* s = state_of(e->comm);
  pthread_mutex_lock(&s->lock);
  *done = s->completed >= e->seq;
  da_status st = *done || s->fatal ? take_error_locked(s, e->seq) : DA_STATUS_SUCCESS;
  pthread_mutex_unlock(&s->lock);
  return st;
}

static da_status mpi_event_synchronize(da_comm_event* e) {
  return wait_seq(e->comm, e->seq, "event_synchronize");
}

static da_status mpi_event_stream_wait(da_comm_event* e, void* stream) {
  (void)stream;
  return wait_seq(e->comm, e->seq, "event_stream_wait");
}

static da_status mpi_wait_stream(da_comm* comm, void* stream) {
  (void)comm;
  (void)stream;
  return DA_STATUS_SUCCESS;
}

static da_status mpi_synchronize(da_comm* comm) {
  mpi_state* s = state_of(comm);
  pthread_mutex_lock(&s->lock);
  uint64_t seq = s->enqueued;
  pthread_mutex_unlock(&s->lock);
  return wait_seq(comm, seq, "synchronize");
}

static da_status mpi_copy(da_comm* comm, void* dst, const void* src, size_t bytes) {
  (void)comm;
  if (dst != src && bytes) memcpy(dst, src, bytes);
  return DA_STATUS_SUCCESS;
}

static da_status mpi_check_buffer(da_comm* comm, const void* p, const char* what) {
  (void)comm;
  (void)p;
  (void)what;
  return DA_STATUS_SUCCESS;
}

static void free_state(mpi_state* s, int talk_to_mpi) {
  if (talk_to_mpi) {
    if (s->have_types) {
      MPI_Type_free(&s->half);
      for (int t = 0; t < 2; t++)
        for (int o = 0; o < 3; o++)
          if (s->half_ops[t][o] != MPI_OP_NULL) MPI_Op_free(&s->half_ops[t][o]);
    }
    if (s->comm != MPI_COMM_NULL) MPI_Comm_free(&s->comm);
  }
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->wake);
  pthread_cond_destroy(&s->done);
  free(s->group_ops);
  free(s);
}

static da_status mpi_destroy(da_comm* comm) {
  mpi_state* s = state_of(comm);
  da_status st = DA_STATUS_SUCCESS;
  if (!s->fatal) st = mpi_synchronize(comm);
  pthread_mutex_lock(&s->lock);
  s->stop = 1;
  pthread_cond_signal(&s->wake);
  int healthy = !s->fatal && st == DA_STATUS_SUCCESS;
  if (st == DA_STATUS_SUCCESS && s->error.status != DA_STATUS_SUCCESS)
    st = da_comm_error_raise(&s->error);
  pthread_mutex_unlock(&s->lock);
  if (s->worker_started) pthread_join(s->worker, NULL);
  /* A failed communicator may have requests in flight: freeing it (or their buffers)
   * would hand MPI dangling memory, and MPI_Comm_free may wait for the dead peer. */
  free_state(s, healthy);
  free(comm);
  return st;
}

static const da_comm_vtable mpi_vtable = {
    "mpi",
    mpi_destroy,
    mpi_enqueue,
    mpi_run,
    mpi_submit,
    mpi_group_start,
    mpi_group_end,
    mpi_verify,
    mpi_event_init,
    mpi_event_fini,
    mpi_event_record,
    mpi_event_query,
    mpi_event_synchronize,
    mpi_event_stream_wait,
    mpi_wait_stream,
    mpi_synchronize,
    mpi_copy,
    mpi_check_buffer,
};

/* --- Creation ------------------------------------------------------------------------------- */

da_status da_comm_create_mpi(const da_comm_config* config, da_comm** comm) {
  static const char fn[] = "comm_create_mpi";
  da_error_clear();
  if (comm == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: comm must not be NULL", fn);
  *comm = NULL;
  da_comm_config c = config ? *config : da_comm_config_default();
  da_status st = da_comm_check_config(&c, fn);
  if (st == DA_STATUS_SUCCESS) st = ensure_mpi(fn);
  if (st != DA_STATUS_SUCCESS) return st;

  da_comm* k = (da_comm*)calloc(1, sizeof *k);
  mpi_state* s = (mpi_state*)calloc(1, sizeof *s);
  if (k == NULL || s == NULL) {
    free(k);
    free(s);
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "%s: no memory for the handle", fn);
  }
  s->comm = MPI_COMM_NULL;
  s->half = MPI_DATATYPE_NULL;
  for (int t = 0; t < 2; t++)
    for (int o = 0; o < 3; o++) s->half_ops[t][o] = MPI_OP_NULL;
  pthread_mutex_init(&s->lock, NULL);
  pthread_cond_init(&s->wake, NULL);
  pthread_cond_init(&s->done, NULL);
  k->vt = &mpi_vtable;
  k->engine = DA_COMM_ENGINE_MPI;
  k->config = c;
  k->device = -1;
  k->engine_state = s;

  st = duplicate_base(&c, &s->comm, fn);
  if (st != DA_STATUS_SUCCESS) {
    s->comm = MPI_COMM_NULL; /* an unfinished idup is abandoned */
    free_state(s, 0);
    free(k);
    return st;
  }
  MPI_Comm_rank(s->comm, &k->rank);
  MPI_Comm_size(s->comm, &k->size);
  st = create_types(s);
  if (st == DA_STATUS_SUCCESS) {
    s->last_progress = da_now_seconds();
    if (pthread_create(&s->worker, NULL, worker_main, k) != 0)
      st = da_error_set(DA_STATUS_INTERNAL_ERROR, "%s: cannot start the worker thread", fn);
    else
      s->worker_started = 1;
  }
  if (st != DA_STATUS_SUCCESS) {
    free_state(s, 1);
    free(k);
    return st;
  }
  *comm = k;
  return DA_STATUS_SUCCESS;
}

da_status da_comm_mpi_finalize(void) {
  da_error_clear();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (g_mpi_initialized_here && !finalized) {
    g_mpi_initialized_here = 0;
    int rc = MPI_Finalize();
    if (rc != MPI_SUCCESS) return mpi_failure(rc, "MPI_Finalize");
  }
  return DA_STATUS_SUCCESS;
}

/* --- NCCL over MPI --------------------------------------------------------------------------- */

da_status da_comm_create_nccl_mpi(const da_comm_config* config, da_comm** comm) {
  static const char fn[] = "comm_create_nccl_mpi";
  da_error_clear();
  if (comm == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: comm must not be NULL", fn);
  *comm = NULL;
  da_comm_config c = config ? *config : da_comm_config_default();
  da_status st = da_comm_check_config(&c, fn);
  if (st == DA_STATUS_SUCCESS) st = ensure_mpi(fn);
  if (st != DA_STATUS_SUCCESS) return st;

  MPI_Comm mc = MPI_COMM_NULL;
  st = duplicate_base(&c, &mc, fn);
  if (st != DA_STATUS_SUCCESS) return st;
  int rank = 0, size = 1;
  MPI_Comm_rank(mc, &rank);
  MPI_Comm_size(mc, &size);

  /* Local rank: how many lower ranks share this host's name. */
  /* size names, then this rank's (heap: MPI may touch them after a timeout). */
  char* names = (char*)calloc((size_t)size + 1, MPI_MAX_PROCESSOR_NAME);
  char* mine = names ? names + (size_t)size * MPI_MAX_PROCESSOR_NAME : NULL;
  int len = 0, failed = 0;
  if (names == NULL) {
    st = da_error_set(DA_STATUS_OUT_OF_MEMORY, "%s: no memory for %d host names", fn, size);
  } else {
    MPI_Get_processor_name(mine, &len);
    MPI_Request request;
    int rc = MPI_Iallgather(mine, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names, MPI_MAX_PROCESSOR_NAME,
                            MPI_CHAR, mc, &request);
    st = rc == MPI_SUCCESS ? wait_requests(&request, 1, deadline_of(&c), c.timeout_ms,
                                           "NCCL bootstrap: host names (all-gather)", rank, size)
                           : mpi_failure(rc, "NCCL bootstrap: host names");
    failed = st != DA_STATUS_SUCCESS;
  }
  int local_rank = 0;
  if (st == DA_STATUS_SUCCESS)
    for (int r = 0; r < rank; r++)
      if (strncmp(names + (size_t)r * MPI_MAX_PROCESSOR_NAME, mine, MPI_MAX_PROCESSOR_NAME) == 0)
        local_rank++;
  if (!failed) {
    free(names);
    names = NULL;
  }

  /* Every rank takes part in the broadcast, even one without a GPU, so the others
   * are not left waiting; the failure is then reported by NCCL's own init. */
  int device = c.device;
  int devices = 0;
  da_status device_status = DA_STATUS_SUCCESS;
  char device_error[512] = "";
  if (st == DA_STATUS_SUCCESS && device < 0) {
    device_status = da_device_count(&devices);
    if (device_status == DA_STATUS_SUCCESS) device = local_rank % devices;
    snprintf(device_error, sizeof device_error, "%s", da_last_error());
  }
  da_comm_nccl_id* id = (da_comm_nccl_id*)calloc(1, sizeof *id); /* leaked on failure */
  if (st == DA_STATUS_SUCCESS && id == NULL)
    st = da_error_set(DA_STATUS_OUT_OF_MEMORY, "%s: no memory", fn);
  if (st == DA_STATUS_SUCCESS && rank == 0 && device_status == DA_STATUS_SUCCESS)
    device_status = da_comm_nccl_get_id(id);
  if (st == DA_STATUS_SUCCESS) {
    MPI_Request request;
    int rc = MPI_Ibcast(id, (int)sizeof *id, MPI_BYTE, 0, mc, &request);
    st = rc == MPI_SUCCESS ? wait_requests(&request, 1, deadline_of(&c), c.timeout_ms,
                                           "NCCL bootstrap: unique id (broadcast)", rank, size)
                           : mpi_failure(rc, "NCCL bootstrap: unique id");
    failed = st != DA_STATUS_SUCCESS;
  }
  if (failed) { /* mc, names and id stay with MPI */
    if (names) DA_ABANDON(names);
    if (id) DA_ABANDON(id);
    return st;
  }
  MPI_Comm_free(&mc);
  if (st != DA_STATUS_SUCCESS) {
    free(id);
    return st;
  }
  if (device_status != DA_STATUS_SUCCESS) {
    free(id);
    if (device_error[0]) return da_error_set(device_status, "%s: rank %d: %s", fn, rank, device_error);
    return da_error_wrap(device_status, "%s: rank %d", fn, rank);
  }
  da_comm_nccl_id local = *id;
  free(id);
  return da_comm_create_nccl_rank(&c, &local, rank, size, device, comm);
}
