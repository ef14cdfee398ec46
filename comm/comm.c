/* The engine-independent communicator API: argument checks, then the engine's
 * vtable (comm_internal.h). */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_internal.h"
#include "comm/compress.h"

da_comm_config da_comm_config_default(void) {
  da_comm_config c;
  c.timeout_ms = 300000;
  c.verify_sizes = 1;
  c.mpi_comm = NULL;
  c.device = -1;
  return c;
}

const char* da_comm_engine_name(da_comm_engine engine) {
  switch (engine) {
    case DA_COMM_ENGINE_MPI: return "mpi";
    case DA_COMM_ENGINE_NCCL: return "nccl";
  }
  return "unknown";
}

size_t da_elem_size(da_elem elem) {
  switch (elem) {
    case DA_ELEM_F32: return 4;
    case DA_ELEM_F16: return 2;
    case DA_ELEM_BF16: return 2;
    case DA_ELEM_F64: return 8;
    case DA_ELEM_U8: return 1;
    case DA_ELEM_I32: return 4;
    case DA_ELEM_I64: return 8;
  }
  return 0;
}

const char* da_elem_name(da_elem elem) {
  switch (elem) {
    case DA_ELEM_U8: return "u8";
    case DA_ELEM_I32: return "i32";
    case DA_ELEM_I64: return "i64";
    default: return da_dtype_name((da_dtype)elem);
  }
}

const char* da_op_kind_name(da_op_kind kind) {
  switch (kind) {
    case DA_OP_ALLREDUCE: return "all-reduce";
    case DA_OP_ALLGATHER: return "all-gather";
    case DA_OP_REDUCE_SCATTER: return "reduce-scatter";
    case DA_OP_BROADCAST: return "broadcast";
    case DA_OP_SEND: return "send";
    case DA_OP_RECV: return "recv";
    case DA_OP_BARRIER: return "barrier";
  }
  return "unknown";
}

const char* const da_signature_field_names[DA_SIGNATURE_FIELDS] = {"operation", "count", "dtype",
                                                                    "reduction", "root"};

void da_opdesc_signature(const da_comm_opdesc* op, int64_t s[DA_SIGNATURE_FIELDS]) {
  s[0] = (int64_t)op->kind;
  s[1] = (int64_t)op->count;
  s[2] = (int64_t)op->elem;
  s[3] = op->kind == DA_OP_ALLREDUCE || op->kind == DA_OP_REDUCE_SCATTER ? (int64_t)op->op : 0;
  s[4] = op->kind == DA_OP_BROADCAST ? (int64_t)op->peer : 0;
}

da_status da_comm_error_raise(const da_comm_error* error) {
  return da_error_set(error->status, "%s", error->message);
}

void da_comm_error_capture(da_comm_error* error, da_status st) {
  if (error->status != DA_STATUS_SUCCESS || st == DA_STATUS_SUCCESS) return;
  error->status = st;
  snprintf(error->message, sizeof error->message, "%s", da_last_error());
}

da_status da_error_wrap(da_status st, const char* prefix_fmt, ...) {
  char sentence[512], prefix[256];
  snprintf(sentence, sizeof sentence, "%s", da_last_error());
  va_list ap;
  va_start(ap, prefix_fmt);
  vsnprintf(prefix, sizeof prefix, prefix_fmt, ap);
  va_end(ap);
  return da_error_set(st, "%s: %s", prefix, sentence);
}

void da_host_scale(void* data, size_t count, da_elem elem, double factor) {
  switch (elem) {
    case DA_ELEM_F32: da_cx_scale((float*)data, count, (float)factor); break;
    case DA_ELEM_F64: {
      double* d = (double*)data;
      for (size_t i = 0; i < count; i++) d[i] *= factor;
      break;
    }
    case DA_ELEM_F16: {
      uint16_t* h = (uint16_t*)data;
      for (size_t i = 0; i < count; i++)
        h[i] = da_cx_f32_to_f16(da_cx_f16_to_f32(h[i]) * (float)factor);
      break;
    }
    case DA_ELEM_BF16: {
      uint16_t* h = (uint16_t*)data;
      for (size_t i = 0; i < count; i++)
        h[i] = da_cx_f32_to_bf16(da_cx_bf16_to_f32(h[i]) * (float)factor);
      break;
    }
    default: break;
  }
}

/* --- Checks ------------------------------------------------------------------------ */

static da_status check_comm(const da_comm* comm, const char* fn) {
  if (comm == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: comm must not be NULL", fn);
  return DA_STATUS_SUCCESS;
}

static da_status check_dtype(da_dtype dtype, const char* fn) {
  if (da_dtype_size(dtype) == 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: dtype=%d is not a da_dtype", fn, (int)dtype);
  return DA_STATUS_SUCCESS;
}

static da_status check_op(da_comm_op op, const char* fn) {
  if (op < DA_COMM_SUM || op > DA_COMM_MIN)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: op=%d is not a da_comm_op", fn, (int)op);
  return DA_STATUS_SUCCESS;
}

static da_status check_rank(const da_comm* comm, int r, const char* what, const char* fn) {
  if (r < 0 || r >= comm->size)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: %s=%d is outside [0, %d)", fn, what, r,
                        comm->size);
  return DA_STATUS_SUCCESS;
}

static da_status check_buffer(da_comm* comm, const void* p, size_t count, const char* what,
                              const char* fn) {
  if (count == 0) return DA_STATUS_SUCCESS;
  if (p == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: %s must not be NULL (count=%zu)", fn, what,
                        count);
  return comm->vt->check_buffer(comm, p, what);
}

static da_status enqueue1(da_comm* comm, const da_comm_opdesc* op) {
  return comm->vt->enqueue(comm, op, 1, comm->config.verify_sizes);
}

/* --- Lifetime and queries ------------------------------------------------------------ */

da_status da_comm_destroy(da_comm* comm) {
  da_error_clear();
  if (comm == NULL) return DA_STATUS_SUCCESS;
  return comm->vt->destroy(comm);
}

da_status da_comm_rank(const da_comm* comm, int* rank) {
  da_error_clear();
  if (comm == NULL || rank == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "comm_rank: comm and rank must not be NULL");
  *rank = comm->rank;
  return DA_STATUS_SUCCESS;
}

da_status da_comm_size(const da_comm* comm, int* size) {
  da_error_clear();
  if (comm == NULL || size == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "comm_size: comm and size must not be NULL");
  *size = comm->size;
  return DA_STATUS_SUCCESS;
}

da_status da_comm_engine_of(const da_comm* comm, da_comm_engine* engine) {
  da_error_clear();
  if (comm == NULL || engine == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "comm_engine_of: comm and engine must not be NULL");
  *engine = comm->engine;
  return DA_STATUS_SUCCESS;
}

da_status da_comm_device(const da_comm* comm, int* device) {
  da_error_clear();
  if (comm == NULL || device == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "comm_device: comm and device must not be NULL");
  *device = comm->device;
  return DA_STATUS_SUCCESS;
}

da_status da_comm_stream(const da_comm* comm, void** stream) {
  da_error_clear();
  if (comm == NULL || stream == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "comm_stream: comm and stream must not be NULL");
  *stream = comm->stream;
  return DA_STATUS_SUCCESS;
}

/* --- Collectives ---------------------------------------------------------------------- */

da_status da_comm_allreduce(da_comm* comm, const void* send, void* recv, size_t count,
                            da_dtype dtype, da_comm_op op) {
  static const char fn[] = "allreduce";
  da_error_clear();
  da_status st = check_comm(comm, fn);
  if (!st) st = check_dtype(dtype, fn);
  if (!st) st = check_op(op, fn);
  if (!st) st = check_buffer(comm, send, count, "send", fn);
  if (!st) st = check_buffer(comm, recv, count, "recv", fn);
  if (st) return st;
  da_comm_opdesc d = {DA_OP_ALLREDUCE, send, recv, count, (da_elem)dtype, op, 0};
  return enqueue1(comm, &d);
}

da_status da_comm_allgather(da_comm* comm, const void* send, void* recv, size_t send_count,
                            da_dtype dtype) {
  static const char fn[] = "allgather";
  da_error_clear();
  da_status st = check_comm(comm, fn);
  if (!st) st = check_dtype(dtype, fn);
  if (!st) st = check_buffer(comm, send, send_count, "send", fn);
  if (!st) st = check_buffer(comm, recv, send_count, "recv", fn);
  if (st) return st;
  if (send_count > SIZE_MAX / (size_t)comm->size)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: send_count=%zu times size=%d overflows",
                        fn, send_count, comm->size);
  da_comm_opdesc d = {DA_OP_ALLGATHER, send, recv, send_count, (da_elem)dtype, DA_COMM_SUM, 0};
  return enqueue1(comm, &d);
}

da_status da_comm_reduce_scatter(da_comm* comm, const void* send, void* recv, size_t recv_count,
                                 da_dtype dtype, da_comm_op op) {
  static const char fn[] = "reduce_scatter";
  da_error_clear();
  da_status st = check_comm(comm, fn);
  if (!st) st = check_dtype(dtype, fn);
  if (!st) st = check_op(op, fn);
  if (!st) st = check_buffer(comm, send, recv_count, "send", fn);
  if (!st) st = check_buffer(comm, recv, recv_count, "recv", fn);
  if (st) return st;
  if (recv_count > SIZE_MAX / (size_t)comm->size)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: recv_count=%zu times size=%d overflows",
                        fn, recv_count, comm->size);
  da_comm_opdesc d = {DA_OP_REDUCE_SCATTER, send, recv, recv_count, (da_elem)dtype, op, 0};
  return enqueue1(comm, &d);
}

da_status da_comm_broadcast(da_comm* comm, const void* send, void* recv, size_t count,
                            da_dtype dtype, int root) {
  static const char fn[] = "broadcast";
  da_error_clear();
  da_status st = check_comm(comm, fn);
  if (!st) st = check_dtype(dtype, fn);
  if (!st) st = check_rank(comm, root, "root", fn);
  if (!st && comm->rank == root) st = check_buffer(comm, send, count, "send", fn);
  if (!st) st = check_buffer(comm, recv, count, "recv", fn);
  if (st) return st;
  da_comm_opdesc d = {DA_OP_BROADCAST, send, recv, count, (da_elem)dtype, DA_COMM_SUM, root};
  return enqueue1(comm, &d);
}

da_status da_comm_send(da_comm* comm, const void* buf, size_t count, da_dtype dtype, int peer) {
  static const char fn[] = "send";
  da_error_clear();
  da_status st = check_comm(comm, fn);
  if (!st) st = check_dtype(dtype, fn);
  if (!st) st = check_rank(comm, peer, "peer", fn);
  if (!st) st = check_buffer(comm, buf, count, "buf", fn);
  if (st) return st;
  da_comm_opdesc d = {DA_OP_SEND, buf, NULL, count, (da_elem)dtype, DA_COMM_SUM, peer};
  return comm->vt->enqueue(comm, &d, 1, 0);
}

da_status da_comm_recv(da_comm* comm, void* buf, size_t count, da_dtype dtype, int peer) {
  static const char fn[] = "recv";
  da_error_clear();
  da_status st = check_comm(comm, fn);
  if (!st) st = check_dtype(dtype, fn);
  if (!st) st = check_rank(comm, peer, "peer", fn);
  if (!st) st = check_buffer(comm, buf, count, "buf", fn);
  if (st) return st;
  da_comm_opdesc d = {DA_OP_RECV, NULL, buf, count, (da_elem)dtype, DA_COMM_SUM, peer};
  return comm->vt->enqueue(comm, &d, 1, 0);
}

da_status da_comm_sendrecv(da_comm* comm, const void* send, size_t send_count, int dst, void* recv,
                           size_t recv_count, int src, da_dtype dtype) {
  static const char fn[] = "sendrecv";
  da_error_clear();
  da_status st = check_comm(comm, fn);
  if (!st) st = check_dtype(dtype, fn);
  if (!st) st = check_rank(comm, dst, "dst", fn);
  if (!st) st = check_rank(comm, src, "src", fn);
  if (!st) st = check_buffer(comm, send, send_count, "send", fn);
  if (!st) st = check_buffer(comm, recv, recv_count, "recv", fn);
  if (st) return st;
  da_comm_opdesc d[2] = {{DA_OP_SEND, send, NULL, send_count, (da_elem)dtype, DA_COMM_SUM, dst},
                         {DA_OP_RECV, NULL, recv, recv_count, (da_elem)dtype, DA_COMM_SUM, src}};
  return comm->vt->enqueue(comm, d, 2, 0);
}

da_status da_comm_group_start(da_comm* comm) {
  da_error_clear();
  da_status st = check_comm(comm, "group_start");
  return st ? st : comm->vt->group_start(comm);
}

da_status da_comm_group_end(da_comm* comm) {
  da_error_clear();
  da_status st = check_comm(comm, "group_end");
  return st ? st : comm->vt->group_end(comm);
}

da_status da_comm_barrier(da_comm* comm) {
  da_error_clear();
  da_status st = check_comm(comm, "barrier");
  if (st) return st;
  da_comm_opdesc d = {DA_OP_BARRIER, NULL, NULL, 0, DA_ELEM_U8, DA_COMM_SUM, 0};
  st = comm->vt->enqueue(comm, &d, 1, 0);
  return st ? st : comm->vt->synchronize(comm);
}

da_status da_comm_wait_stream(da_comm* comm, void* stream) {
  da_error_clear();
  da_status st = check_comm(comm, "wait_stream");
  return st ? st : comm->vt->wait_stream(comm, stream);
}

da_status da_comm_synchronize(da_comm* comm) {
  da_error_clear();
  da_status st = check_comm(comm, "synchronize");
  return st ? st : comm->vt->synchronize(comm);
}

/* --- Events ------------------------------------------------------------------------------ */

da_status da_comm_event_create(da_comm* comm, da_comm_event** event) {
  da_error_clear();
  if (comm == NULL || event == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "event_create: comm and event must not be NULL");
  *event = NULL;
  da_comm_event* e = (da_comm_event*)calloc(1, sizeof *e);
  if (e == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "event_create: no memory");
  e->comm = comm;
  da_status st = comm->vt->event_init(e);
  if (st != DA_STATUS_SUCCESS) {
    free(e);
    return st;
  }
  *event = e;
  return DA_STATUS_SUCCESS;
}

da_status da_comm_event_destroy(da_comm_event* event) {
  da_error_clear();
  if (event == NULL) return DA_STATUS_SUCCESS;
  event->comm->vt->event_fini(event);
  free(event);
  return DA_STATUS_SUCCESS;
}

da_status da_comm_event_record(da_comm_event* event) {
  da_error_clear();
  if (event == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "event_record: event must not be NULL");
  return event->comm->vt->event_record(event);
}

da_status da_comm_event_query(da_comm_event* event, int* done) {
  da_error_clear();
  if (event == NULL || done == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "event_query: event and done must not be NULL");
  *done = 0;
  if (!event->recorded) {
    *done = 1; /* as cudaEventQuery on a never-recorded event */
    return DA_STATUS_SUCCESS;
  }
  return event->comm->vt->event_query(event, done);
}

da_status da_comm_event_synchronize(da_comm_event* event) {
  da_error_clear();
  if (event == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "event_synchronize: event must not be NULL");
  if (!event->recorded) return DA_STATUS_SUCCESS;
  return event->comm->vt->event_synchronize(event);
}

da_status da_comm_event_stream_wait(da_comm_event* event, void* stream) {
  da_error_clear();
  if (event == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "event_stream_wait: event must not be NULL");
  if (!event->recorded) return DA_STATUS_SUCCESS;
  return event->comm->vt->event_stream_wait(event, stream);
}

da_status da_comm_check_config(const da_comm_config* c, const char* fn) {
  if (c->timeout_ms <= 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: config.timeout_ms=%d must be positive", fn,
                        c->timeout_ms);
  if (c->verify_sizes != 0 && c->verify_sizes != 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: config.verify_sizes=%d must be 0 or 1", fn,
                        c->verify_sizes);
  return DA_STATUS_SUCCESS;
}

