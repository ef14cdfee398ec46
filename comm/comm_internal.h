/* comm_internal.h: what the engines (mpi_engine.c, nccl_engine.c) and the
 * engine-independent layer (comm.c, grad.c) share. Library-internal.
 *
 * Model. A da_comm is a handle with an engine vtable. Every operation is a
 * da_comm_opdesc. The engine runs descriptors in two ways:
 *   - enqueue: from the caller's thread, in call order on the communication stream
 *     (NCCL: ncclAllReduce & co. on the stream; MPI: a job for the worker thread);
 *   - run: from inside a job (see submit), with the same ordering guarantees as the
 *     work around it (NCCL: enqueued on the stream; MPI: started and completed on the
 *     worker, bounded by the timeout).
 * submit(fn) runs a job: NCCL at once in the caller's thread (everything the job does
 * is stream-ordered), MPI later on the worker thread, after the jobs before it. The
 * gradient communicator writes its bucket work as jobs, so one piece of code serves
 * both engines. */
#ifndef DA_COMM_INTERNAL_H
#define DA_COMM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "comm/da_comm.h"
#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element types on the wire: the public dtypes plus the integer types compressed
 * payloads and signatures need. Values of da_dtype are kept. */
typedef enum {
  DA_ELEM_F32 = DA_DTYPE_F32,
  DA_ELEM_F16 = DA_DTYPE_F16,
  DA_ELEM_BF16 = DA_DTYPE_BF16,
  DA_ELEM_F64 = DA_DTYPE_F64,
  DA_ELEM_U8 = 16,
  DA_ELEM_I32 = 17,
  DA_ELEM_I64 = 18
} da_elem;

size_t da_elem_size(da_elem elem);
const char* da_elem_name(da_elem elem);

typedef enum {
  DA_OP_ALLREDUCE = 0,
  DA_OP_ALLGATHER = 1,
  DA_OP_REDUCE_SCATTER = 2,
  DA_OP_BROADCAST = 3,
  DA_OP_SEND = 4,
  DA_OP_RECV = 5,
  DA_OP_BARRIER = 6
} da_op_kind;

const char* da_op_kind_name(da_op_kind kind);

/* One operation. count: allreduce/broadcast/send/recv elements; allgather: elements
 * sent per rank; reduce-scatter: elements received per rank. peer: root of a
 * broadcast, the other rank of send/recv. */
typedef struct {
  da_op_kind kind;
  const void* send;
  void* recv;
  size_t count;
  da_elem elem;
  da_comm_op op;
  int peer;
} da_comm_opdesc;

/* Number of int64 fields of an operation's signature. */
#define DA_SIGNATURE_FIELDS 5
void da_opdesc_signature(const da_comm_opdesc* op, int64_t signature[DA_SIGNATURE_FIELDS]);
extern const char* const da_signature_field_names[DA_SIGNATURE_FIELDS];

typedef da_status (*da_job_fn)(da_comm* comm, void* arg);

/* Events are engine-specific below this common head. */
struct da_comm_event {
  da_comm* comm;
  uint64_t seq;    /* MPI: jobs enqueued before the record; 0 = never recorded */
  void* cuda_event; /* NCCL: cudaEvent_t */
  int recorded;
};

typedef struct {
  const char* name;
  da_status (*destroy)(da_comm* comm);
  /* Collectives from the caller's thread (verify: exchange signatures first). */
  da_status (*enqueue)(da_comm* comm, const da_comm_opdesc* ops, int n, int verify);
  /* Collectives from inside a job. */
  da_status (*run)(da_comm* comm, const da_comm_opdesc* ops, int n);
  /* Runs fn(comm, copy of arg) as a job (arg is copied: arg_bytes). */
  da_status (*submit)(da_comm* comm, da_job_fn fn, const void* arg, size_t arg_bytes);
  da_status (*group_start)(da_comm* comm);
  da_status (*group_end)(da_comm* comm);
  /* Synchronous signature check across ranks (collective, bounded): *mismatch =
   * index of the first field that differs (-1: none); lo/hi its range. Orders after
   * everything enqueued before. */
  da_status (*verify)(da_comm* comm, const int64_t* signature, int n, int* mismatch, int64_t* lo,
                      int64_t* hi);
  da_status (*event_init)(da_comm_event* event);
  void (*event_fini)(da_comm_event* event);
  da_status (*event_record)(da_comm_event* event);
  da_status (*event_query)(da_comm_event* event, int* done);
  da_status (*event_synchronize)(da_comm_event* event);
  da_status (*event_stream_wait)(da_comm_event* event, void* stream);
  da_status (*wait_stream)(da_comm* comm, void* stream);
  da_status (*synchronize)(da_comm* comm);
  /* From inside a job: dst <- src, bytes (host memcpy or a device copy in stream). */
  da_status (*copy)(da_comm* comm, void* dst, const void* src, size_t bytes);
  /* Whether `ptr` is memory this engine can move (device for NCCL, host for MPI). */
  da_status (*check_buffer)(da_comm* comm, const void* ptr, const char* what);
} da_comm_vtable;

struct da_comm {
  const da_comm_vtable* vt;
  da_comm_engine engine;
  da_comm_config config;
  int rank, size;
  int device;    /* NCCL: CUDA ordinal; MPI: -1 */
  void* stream;  /* NCCL: cudaStream_t; MPI: NULL */
  void* engine_state;
};

/* Memory handed to a non-blocking MPI call that timed out is never freed (MPI may
 * still write into it); this tells LeakSanitizer the leak is deliberate. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define DA_ABANDON(p) __lsan_ignore_object(p)
#else
#define DA_ABANDON(p) ((void)(p))
#endif

/* Monotonic clock. */
static inline double da_now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A sticky error: the first failure of a communicator, reported by every later call.
 * The sentence is copied out of the failing thread's da_last_error. */
typedef struct {
  da_status status;
  char message[512];
} da_comm_error;

/* Sets the calling thread's last error from a recorded one and returns its status. */
da_status da_comm_error_raise(const da_comm_error* error);
/* Records the calling thread's current last error (status st) into *error, unless it
 * already holds one. */
void da_comm_error_capture(da_comm_error* error, da_status st);

/* Prefixes the calling thread's last error: "<prefix>: <sentence>" (the sentence is
 * copied first; da_error_set must not read its own buffer). Returns st. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
da_status da_error_wrap(da_status st, const char* prefix_fmt, ...);

/* Host helpers shared by the engines: scaling for AVG on engines without it. */
void da_host_scale(void* data, size_t count, da_elem elem, double factor);

/* Validates the engine-independent fields of a communicator config (timeout_ms,
 * verify_sizes); fn names the creating call in the sentence. */
da_status da_comm_check_config(const da_comm_config* c, const char* fn);

#ifdef __cplusplus
}
#endif

#endif /* DA_COMM_INTERNAL_H */
