/* bucket.h: which gradients go into which bucket, and in which order buckets are
 * reduced. Pure logic (no memory of the gradients, no communication), so it is
 * tested on its own. Library-internal; visible to tests/comm.
 *
 * The rule is DDP's (torch.distributed compute_bucket_assignment_by_size, applied
 * to the order gradients become ready): walk the tensors in reverse registration
 * order; each dtype has one open bucket; append the tensor; close the bucket when it
 * holds >= its cap in bytes or max_tensors tensors. A dtype's first bucket has
 * first_cap_bytes, the later ones cap_bytes. Buckets are numbered in the order they
 * were opened, which is the order they are reduced in. Inside a bucket tensors are
 * laid out in registration order (so gradients that are views of one flat buffer
 * make a contiguous bucket that can be reduced in place). */
#ifndef DA_COMM_BUCKET_H
#define DA_COMM_BUCKET_H

#include <stddef.h>

#include "common/da_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int first;       /* index into da_bucket_plan.tensors of its first tensor */
  int num_tensors;
  size_t count;    /* elements */
  da_dtype dtype;
} da_bucket;

typedef struct {
  int num_buckets;
  int num_tensors;
  da_bucket* buckets;
  int* tensors;      /* tensor indices, bucket by bucket, each in registration order */
  int* bucket_of;    /* per tensor: its bucket */
  size_t* offset_of; /* per tensor: element offset inside its bucket */
} da_bucket_plan;

/* Plans n tensors (counts[i] elements of dtypes[i], registration order). Caps > 0,
 * max_tensors >= 1. On success *plan owns heap memory: da_bucket_plan_free. */
da_status da_bucket_plan_build(const size_t* counts, const da_dtype* dtypes, int n,
                               size_t cap_bytes, size_t first_cap_bytes, int max_tensors,
                               da_bucket_plan* plan);

void da_bucket_plan_free(da_bucket_plan* plan);

#ifdef __cplusplus
}
#endif

#endif /* DA_COMM_BUCKET_H */
