/* da_comm.h: collective communication for the dilated attention library.
 *
 * Three parts, one header:
 *   1. da_comm: a communicator over one of two engines. NCCL moves device buffers on
 *      a CUDA stream of its own; MPI (Open MPI) moves host buffers on a worker thread
 *      of its own. Both give the same collectives (all-reduce, all-gather,
 *      reduce-scatter, broadcast, send/recv, barrier), asynchronous in call order on
 *      the communicator's "communication stream", with events to wait on.
 *   2. da_grad_comm: gradient bucketing (as PyTorch DDP) with optional lossy
 *      compression and error feedback, over a da_comm.
 *   3. da_codec: lossless zstd compression with byte shuffling, for checkpoints and
 *      slow links.
 *
 * Build targets. Every function below is declared here, but each engine lives in its
 * own Bazel target so that a GPU binary need not link libmpi:
 *   //comm:core  the engine-independent API (collectives, events, da_grad_*)
 *   //comm:nccl  + da_comm_create_nccl_local / _rank, da_comm_nccl_get_id (no MPI)
 *   //comm:mpi   + da_comm_create_mpi, da_comm_create_nccl_mpi, da_comm_mpi_finalize
 *   //comm:codec da_codec_* (libzstd)
 *   //comm:comm  all of the above.
 *
 * Streams. The communication stream of a communicator is a real cudaStream_t for
 * NCCL and an in-order queue run by a worker thread for MPI. Collectives are
 * enqueued in call order and return at once; buffers must stay valid and must not be
 * written (nor, for outputs, read) until an event recorded after the call has
 * completed. CUDA streams and events cross this header as `void*`.
 *
 * Failure is loud and bounded. Every wait (events, synchronize, barrier, creation) is
 * bounded by da_comm_config.timeout_ms: a peer that dies or stops answering ends in
 * DA_STATUS_COMM_ERROR with a sentence naming the operation and the time waited (NCCL:
 * the communicator is aborted with ncclCommAbort; MPI: the communicator is marked
 * failed and no further MPI call is made on it). Sizes that disagree between ranks are
 * found by a signature exchange before the data moves (verify_sizes, on by default)
 * and reported as DA_STATUS_INVALID_ARGUMENT on every rank. A failed communicator
 * answers every later call with its first error; destroy it. MPI cannot recover from
 * a dead peer: after such an error the process should leave without MPI_Finalize
 * (which would wait for the dead peer), e.g. with _exit.
 *
 * Threads. One thread at a time per communicator (and per gradient communicator),
 * like an NCCL communicator. Different communicators may be used from different
 * threads. */
#ifndef DA_COMM_H
#define DA_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "common/da_common.h"
#include "mempool/da_mempool.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------ */
/* 1. Communicator                                                                 */
/* ------------------------------------------------------------------------------ */

typedef struct da_comm da_comm;
typedef struct da_comm_event da_comm_event;

typedef enum {
  DA_COMM_ENGINE_MPI = 0,  /* host buffers, Open MPI, worker thread */
  DA_COMM_ENGINE_NCCL = 1  /* device buffers, NCCL, CUDA stream */
} da_comm_engine;

typedef enum {
  DA_COMM_SUM = 0,
  DA_COMM_AVG = 1, /* sum / size */
  DA_COMM_MAX = 2,
  DA_COMM_MIN = 3
} da_comm_op;

/* How a communicator is built. Plain struct: start from da_comm_config_default(). */
typedef struct {
  /* Bound on every wait, in milliseconds (> 0). Default 300000 (5 minutes, as a
   * training job's collective watchdog). A peer that does not answer within it ends
   * the operation, and the communicator, with DA_STATUS_COMM_ERROR. */
  int timeout_ms;
  /* 1 (default): before each collective the ranks exchange its signature (kind,
   * count, type, operation, root) and refuse to move data whose sizes disagree
   * (DA_STATUS_INVALID_ARGUMENT on every rank). Costs one tiny all-reduce per call
   * (MPI: before the data, on the worker; NCCL: in stream, no host sync; a mismatch
   * is reported by the next wait or call). 0: no check. */
  int verify_sizes;
  /* MPI engines: a pointer to the MPI_Comm to duplicate (MPI_Comm* cast to void*);
   * NULL (default): MPI_COMM_WORLD. */
  void* mpi_comm;
  /* da_comm_create_nccl_mpi: the CUDA device of this rank; -1 (default): the local
   * rank (rank among the processes on this host) modulo the visible devices. */
  int device;
} da_comm_config;

/* timeout_ms 300000, verify_sizes 1, mpi_comm NULL, device -1. */
DA_API da_comm_config da_comm_config_default(void);

/* --- Creation (//comm:mpi) ---------------------------------------------------- */

/* Creates an MPI-engine communicator (host buffers) over a duplicate of
 * config->mpi_comm with MPI_ERRORS_RETURN. Collective over that communicator. If MPI
 * is not initialized yet, initializes it (MPI_Init_thread, MPI_THREAD_MULTIPLE);
 * then call da_comm_mpi_finalize at exit. MPI initialized with less than
 * MPI_THREAD_MULTIPLE gives DA_STATUS_NOT_SUPPORTED (the engine's worker thread
 * calls MPI while the caller may too). */
DA_API da_status da_comm_create_mpi(const da_comm_config* config, da_comm** comm);

/* Creates an NCCL-engine communicator (device buffers) for an MPI launch (mpirun -np
 * N, one process per GPU): rank and size from config->mpi_comm, the NCCL unique id
 * broadcast over MPI, device = config->device or the local rank modulo the visible
 * devices. Collective; every step is bounded by the timeout. DA_STATUS_NO_DEVICE
 * without a GPU. */
DA_API da_status da_comm_create_nccl_mpi(const da_comm_config* config, da_comm** comm);

/* Finalizes MPI if da_comm_create_* initialized it and nobody finalized it since;
 * otherwise a no-op. Destroy every MPI communicator first. */
DA_API da_status da_comm_mpi_finalize(void);

/* --- Creation (//comm:nccl, no MPI) -------------------------------------------- */

/* Creates `ndev` NCCL communicators, one per GPU, in this process (ncclCommInitAll):
 * comms[i] is rank i on devices[i] (devices NULL: 0..ndev-1). With several GPUs, a
 * collective must be called on every comms[i] between da_comm_group_start and
 * da_comm_group_end (one thread drives all ranks). */
DA_API da_status da_comm_create_nccl_local(const da_comm_config* config, int ndev,
                                           const int* devices, da_comm** comms);

/* The NCCL unique id of a new clique, for launchers other than MPI: create it on one
 * process, send it to the others, and call da_comm_create_nccl_rank everywhere. */
typedef struct {
  char bytes[128];
} da_comm_nccl_id;
DA_API da_status da_comm_nccl_get_id(da_comm_nccl_id* id);

/* Rank `rank` of `size` of the clique `id`, on CUDA device `device` (non-blocking
 * NCCL initialization, bounded by the timeout). Collective over the clique. */
DA_API da_status da_comm_create_nccl_rank(const da_comm_config* config, const da_comm_nccl_id* id,
                                          int rank, int size, int device, da_comm** comm);

/* --- Lifetime and queries ------------------------------------------------------- */

/* Waits (bounded) for the communicator's queued work, then frees it. NULL is a
 * no-op. A failed communicator is freed without talking to its peers (its MPI
 * duplicate and in-flight requests are leaked on purpose: MPI may still touch them).
 * Returns the communicator's error, if it had one. Not collective, but NCCL and MPI
 * peers should destroy theirs at matching points. */
DA_API da_status da_comm_destroy(da_comm* comm);

DA_API da_status da_comm_rank(const da_comm* comm, int* rank);
DA_API da_status da_comm_size(const da_comm* comm, int* size);
DA_API da_status da_comm_engine_of(const da_comm* comm, da_comm_engine* engine);
/* CUDA device of an NCCL communicator; -1 for MPI. */
DA_API da_status da_comm_device(const da_comm* comm, int* device);
/* The communication stream (cudaStream_t as void*) of an NCCL communicator; NULL for
 * MPI. Work the caller enqueues there runs in order with the collectives. */
DA_API da_status da_comm_stream(const da_comm* comm, void** stream);
/* "mpi" or "nccl". */
DA_API const char* da_comm_engine_name(da_comm_engine engine);

/* --- Collectives ---------------------------------------------------------------- */
/* All enqueue on the communication stream and return at once (see the top). Buffers
 * are device memory for NCCL, host memory for MPI. count = 0 is a no-op. in-place
 * (send == recv) is allowed for all-reduce and broadcast; for all-gather when send ==
 * recv + rank * send_count, for reduce-scatter when recv == send + rank * recv_count.
 * Errors at the call: DA_STATUS_INVALID_ARGUMENT (NULL buffer, bad dtype, op, peer or
 * root, the sentence names it); DA_STATUS_NOT_SUPPORTED (MPI: counts above INT_MAX
 * elements); the communicator's earlier error. Errors of the transfer itself arrive
 * at the next wait. */

/* recv[i] = op over ranks of send[i], i < count. */
DA_API da_status da_comm_allreduce(da_comm* comm, const void* send, void* recv, size_t count,
                                   da_dtype dtype, da_comm_op op);
/* recv[r * send_count + i] = send of rank r [i]; recv holds size * send_count. */
DA_API da_status da_comm_allgather(da_comm* comm, const void* send, void* recv, size_t send_count,
                                   da_dtype dtype);
/* recv[i] = op over ranks of send[rank * recv_count + i]; send holds size * recv_count. */
DA_API da_status da_comm_reduce_scatter(da_comm* comm, const void* send, void* recv,
                                        size_t recv_count, da_dtype dtype, da_comm_op op);
/* recv = send of rank `root` (send is read on root only). */
DA_API da_status da_comm_broadcast(da_comm* comm, const void* send, void* recv, size_t count,
                                   da_dtype dtype, int root);
/* Point to point. A send and the matching receive must both be issued; to exchange
 * with a ring neighbour use da_comm_sendrecv (or a group), which cannot deadlock.
 * Sending to oneself works inside a group (with the matching receive). */
DA_API da_status da_comm_send(da_comm* comm, const void* buf, size_t count, da_dtype dtype,
                              int peer);
DA_API da_status da_comm_recv(da_comm* comm, void* buf, size_t count, da_dtype dtype, int peer);
/* Sends send_count elements to `dst` and receives recv_count from `src`, as one group. */
DA_API da_status da_comm_sendrecv(da_comm* comm, const void* send, size_t send_count, int dst,
                                  void* recv, size_t recv_count, int src, da_dtype dtype);

/* Calls between group_start and group_end are issued together (NCCL: ncclGroupStart /
 * ncclGroupEnd; MPI: started together and completed together on the worker). Groups
 * nest; only the outermost end issues. Needed for several local GPUs driven by one
 * thread and for send/recv pairs that would otherwise wait on each other. */
DA_API da_status da_comm_group_start(da_comm* comm);
DA_API da_status da_comm_group_end(da_comm* comm);

/* Blocks until every rank has arrived, bounded by the timeout. */
DA_API da_status da_comm_barrier(da_comm* comm);

/* NCCL: collectives enqueued from now on wait for the work already enqueued on the
 * caller's CUDA `stream` (e.g. the kernel that produced the send buffer), a stream of
 * the communicator's device (NULL: its legacy default stream). MPI: a no-op (host
 * buffers are ready when the call is made). */
DA_API da_status da_comm_wait_stream(da_comm* comm, void* stream);

/* Blocks until all enqueued work has finished, bounded by the timeout; returns the
 * first error of that work. */
DA_API da_status da_comm_synchronize(da_comm* comm);

/* --- Events --------------------------------------------------------------------- */

DA_API da_status da_comm_event_create(da_comm* comm, da_comm_event** event);
DA_API da_status da_comm_event_destroy(da_comm_event* event);
/* Marks the current end of the communication stream. */
DA_API da_status da_comm_event_record(da_comm_event* event);
/* *done = 1 if everything before the record has finished (0 otherwise). Never
 * blocks; errors of that work are returned as for synchronize. */
DA_API da_status da_comm_event_query(da_comm_event* event, int* done);
/* Blocks until the work before the record has finished, bounded by the timeout. */
DA_API da_status da_comm_event_synchronize(da_comm_event* event);
/* NCCL: the caller's CUDA `stream` waits for the event (no host block). MPI: blocks
 * the host as da_comm_event_synchronize (host work cannot be ordered on a stream). */
DA_API da_status da_comm_event_stream_wait(da_comm_event* event, void* stream);

/* ------------------------------------------------------------------------------ */
/* 2. Gradient communicator                                                        */
/* ------------------------------------------------------------------------------ */

typedef struct da_grad_comm da_grad_comm;

/* Compression of a bucket. Lossy algorithms apply to float32 buckets; buckets of
 * other dtypes are always reduced exactly. Error bounds are in docs/comm.md. */
typedef enum {
  DA_COMPRESS_NONE = 0,      /* exact all-reduce */
  DA_COMPRESS_FP16 = 1,      /* cast to binary16 (round to nearest even), all-reduce */
  DA_COMPRESS_BF16 = 2,      /* cast to bfloat16, all-reduce */
  DA_COMPRESS_TOPK = 3,      /* exact k largest |g|, k = ratio * n; all-gather + scatter-add */
  DA_COMPRESS_RANDOMK = 4,   /* k indices from the shared seed; all-reduce of values */
  DA_COMPRESS_THRESHOLD = 5, /* |g| above the (1 - ratio) quantile of a sample */
  DA_COMPRESS_INT8 = 6       /* int8 with one float scale per chunk; all-gather */
} da_compress_algorithm;

typedef struct {
  da_compress_algorithm algorithm; /* default DA_COMPRESS_NONE */
  /* Top-k, random-k, threshold: fraction of a bucket's elements sent, in (0, 1];
   * default 0.01. Top-k and random-k send exactly max(1, floor(ratio * n)); threshold
   * sends those above its estimated quantile, at most ceil(2 * ratio * n). */
  double ratio;
  /* Lossy algorithms: keep what was not sent in a residual per bucket and add it to
   * the next step's gradient (default 1), so that over steps nothing is lost. */
  int error_feedback;
  /* Random-k index sets derive from (seed, step, bucket); must be equal on every
   * rank (checked at finalize). Default 0x5eed. */
  uint64_t seed;
  /* Int8: elements per scale (>= 16, a multiple of 16); default 256. */
  size_t int8_chunk;
} da_compress_config;

typedef struct {
  /* Buckets are filled in reverse registration order (the order gradients become
   * ready in a backward pass) and closed once they hold >= cap bytes or
   * max_tensors_per_bucket tensors, one open bucket per dtype, as DDP does. The
   * first bucket (the first reduced) uses first_bucket_cap_bytes. */
  size_t bucket_cap_bytes;       /* default 25 MiB */
  size_t first_bucket_cap_bytes; /* default 1 MiB */
  int max_tensors_per_bucket;    /* default 32 */
  int average;                   /* 1 (default): divide the sums by the world size */
  da_compress_config compress;
  /* Bucket, residual and payload memory. NULL (default): the default pool (host pool
   * for MPI, the device's pool for NCCL). Must match the engine's memory. */
  da_mempool* pool;
} da_grad_config;

DA_API da_compress_config da_compress_config_default(void);
DA_API da_grad_config da_grad_config_default(void);

/* Creates a gradient communicator over `comm` (which must outlive it). Not collective. */
DA_API da_status da_grad_create(da_comm* comm, const da_grad_config* config, da_grad_comm** grad);

/* Waits (bounded) for in-flight buckets and frees everything. NULL is a no-op. */
DA_API da_status da_grad_destroy(da_grad_comm* grad);

/* Registers one gradient buffer, in model order (the order of the forward pass):
 * `count` elements of `dtype` at `data` (device memory for NCCL, host for MPI),
 * name copied (<= 127 characters, unique). *index is its number (0, 1, ...). Only
 * before finalize. Every rank registers the same list (checked at finalize). */
DA_API da_status da_grad_register(da_grad_comm* grad, const char* name, void* data, size_t count,
                                  da_dtype dtype, int* index);

/* The index of the gradient registered as `name`. */
DA_API da_status da_grad_find(const da_grad_comm* grad, const char* name, int* index);

/* Plans the buckets, checks with every rank that the plan and the compression
 * config agree (collective, bounded; DA_STATUS_INVALID_ARGUMENT naming the first
 * difference otherwise) and takes bucket memory from the pool. A bucket whose
 * tensors lie back to back in memory (in registration order) is reduced in place,
 * without a copy. Called by the first da_grad_mark_ready if not called before. */
DA_API da_status da_grad_finalize(da_grad_comm* grad);

/* Declares gradient `index` complete for this step. NCCL: `stream` is the CUDA stream
 * that produced it (NULL: the legacy default stream); the reduction waits for it.
 * MPI: ignored. When every gradient of a bucket is ready and every earlier bucket has
 * been launched, the bucket is launched on the communication stream, while the caller
 * goes on. From this call until da_grad_synchronize returns, the buffer belongs to
 * the communicator (it is read, then overwritten with the result). Marking a
 * gradient twice in one step is DA_STATUS_INVALID_ARGUMENT. */
DA_API da_status da_grad_mark_ready(da_grad_comm* grad, int index, void* stream);

/* Ends the step: marks every gradient not yet marked as ready (its current contents
 * are reduced, so every rank issues the same collectives), waits for every bucket
 * (bounded) and leaves the reduced (averaged if config.average) results in place. */
DA_API da_status da_grad_synchronize(da_grad_comm* grad);

typedef struct {
  size_t count;          /* elements */
  size_t bytes;          /* count * dtype size */
  da_dtype dtype;
  int num_tensors;
  int in_place;          /* 1: reduced in the caller's memory without packing */
  size_t payload_bytes;  /* bytes this rank contributes per step (after compression) */
} da_grad_bucket_info;

DA_API da_status da_grad_num_buckets(const da_grad_comm* grad, int* num_buckets);
/* Bucket `bucket` (launch order: bucket 0 is reduced first). tensors (may be NULL)
 * receives its gradient indices in bucket layout order, capacity max_tensors. */
DA_API da_status da_grad_bucket(const da_grad_comm* grad, int bucket, da_grad_bucket_info* info,
                                int* tensors, int max_tensors);

typedef struct {
  uint64_t steps;              /* completed synchronize calls */
  uint64_t buckets_launched;   /* in total; this step: launched_this_step */
  uint64_t buckets_completed;  /* in total (MPI: when the worker finished it; NCCL: when
                                  synchronize observed it) */
  int launched_this_step;
  int unmarked_last_step;      /* gradients synchronize had to mark itself last step */
  uint64_t bytes_reduced;      /* uncompressed gradient bytes reduced, in total */
  uint64_t bytes_sent;         /* payload bytes this rank contributed, in total */
  double residual_norm;        /* L2 norm of the error-feedback residuals (MPI; NCCL: 0) */
} da_grad_stats;

DA_API da_status da_grad_get_stats(const da_grad_comm* grad, da_grad_stats* stats);

/* "none", "fp16", "bf16", "topk", "randomk", "threshold", "int8"; "unknown". */
DA_API const char* da_compress_algorithm_name(da_compress_algorithm algorithm);

/* ------------------------------------------------------------------------------ */
/* 3. Lossless codec (//comm:codec)                                                */
/* ------------------------------------------------------------------------------ */

typedef struct da_codec da_codec;

typedef struct {
  int level;            /* zstd level, 1..19 (negative: zstd's fast levels); default 1:
                           on shuffled gradients it compresses as well as 3, faster */
  int threads;          /* zstd worker threads for compression, 0..64; 0 (default):
                           compress in the calling thread */
  size_t element_bytes; /* byte shuffle: 1 (none), 2 (f16/bf16), 4 (f32), 8 (f64);
                           default 4. Shuffling groups byte k of every element, so that
                           exponents sit together and compress. */
} da_codec_config;

DA_API da_codec_config da_codec_config_default(void);
DA_API da_status da_codec_create(const da_codec_config* config, da_codec** codec);
DA_API da_status da_codec_destroy(da_codec* codec);

/* Largest frame da_codec_compress can write for src_bytes of input. */
DA_API size_t da_codec_compress_bound(size_t src_bytes);

/* Compresses src into one self-describing frame (header + zstd frame with checksum).
 * *dst_bytes = its size. DA_STATUS_INVALID_ARGUMENT when dst_capacity is too small
 * (use da_codec_compress_bound). A codec is used by one thread at a time. */
DA_API da_status da_codec_compress(da_codec* codec, const void* src, size_t src_bytes, void* dst,
                                   size_t dst_capacity, size_t* dst_bytes);

/* The decompressed size written in a frame's header. */
DA_API da_status da_codec_decompressed_size(const void* src, size_t src_bytes, size_t* bytes);

/* Restores the exact bytes. A truncated, corrupted or foreign frame is
 * DA_STATUS_INVALID_ARGUMENT (zstd's checksum catches corruption); dst too small
 * likewise. */
DA_API da_status da_codec_decompress(da_codec* codec, const void* src, size_t src_bytes, void* dst,
                                     size_t dst_capacity, size_t* dst_bytes);

#ifdef __cplusplus
}
#endif

#endif /* DA_COMM_H */
