#include "comm/bucket.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#define NUM_DTYPES 4

static int compare_int(const void* a, const void* b) {
  int x = *(const int*)a, y = *(const int*)b;
  return (x > y) - (x < y);
}

da_status da_bucket_plan_build(const size_t* counts, const da_dtype* dtypes, int n,
                               size_t cap_bytes, size_t first_cap_bytes, int max_tensors,
                               da_bucket_plan* plan) {
  if (plan == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "plan must not be NULL");
  memset(plan, 0, sizeof *plan);
  if (n < 0 || (n > 0 && (counts == NULL || dtypes == NULL)))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "bucket plan: n=%d tensors need counts and dtypes", n);
  if (cap_bytes == 0 || first_cap_bytes == 0 || max_tensors < 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "bucket plan: caps (%zu, first %zu bytes) and max_tensors (%d) must be "
                        "positive",
                        cap_bytes, first_cap_bytes, max_tensors);
  for (int i = 0; i < n; i++) {
    if (da_dtype_size(dtypes[i]) == 0)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "bucket plan: tensor %d has dtype %d, not a da_dtype", i, (int)dtypes[i]);
    if (counts[i] == 0)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT, "bucket plan: tensor %d has count 0", i);
  }

  size_t slots = (size_t)(n > 0 ? n : 1); /* at most one bucket per tensor */
  size_t* bucket_bytes = (size_t*)calloc(slots, sizeof(size_t));
  int* walk_bucket = (int*)malloc(sizeof(int) * slots); /* bucket of the w-th walked tensor */
  int* fill = (int*)calloc(slots, sizeof(int));
  plan->buckets = (da_bucket*)calloc(slots, sizeof(da_bucket));
  plan->tensors = (int*)malloc(sizeof(int) * slots);
  plan->bucket_of = (int*)malloc(sizeof(int) * slots);
  plan->offset_of = (size_t*)malloc(sizeof(size_t) * slots);
  da_status st = DA_STATUS_SUCCESS;
  if (!bucket_bytes || !walk_bucket || !fill || !plan->buckets || !plan->tensors ||
      !plan->bucket_of || !plan->offset_of) {
    st = da_error_set(DA_STATUS_OUT_OF_MEMORY, "bucket plan: no memory for %d tensors", n);
    da_bucket_plan_free(plan);
    goto done;
  }

  /* Walk in the order gradients become ready; one open bucket per dtype. */
  int open_bucket[NUM_DTYPES] = {-1, -1, -1, -1};
  int had_first[NUM_DTYPES] = {0, 0, 0, 0};
  int num_buckets = 0;
  for (int w = 0; w < n; w++) {
    int t = n - 1 - w;
    int key = (int)dtypes[t];
    if (open_bucket[key] < 0) {
      open_bucket[key] = num_buckets;
      plan->buckets[num_buckets].dtype = dtypes[t];
      num_buckets++;
    }
    int b = open_bucket[key];
    walk_bucket[w] = b;
    plan->buckets[b].num_tensors++;
    plan->buckets[b].count += counts[t];
    bucket_bytes[b] += counts[t] * da_dtype_size(dtypes[t]);
    size_t limit = had_first[key] ? cap_bytes : first_cap_bytes;
    if (bucket_bytes[b] >= limit || plan->buckets[b].num_tensors >= max_tensors) {
      open_bucket[key] = -1;
      had_first[key] = 1;
    }
  }

  /* Buckets are numbered in opening order: that is the launch order. */
  int cursor = 0;
  for (int b = 0; b < num_buckets; b++) {
    plan->buckets[b].first = cursor;
    cursor += plan->buckets[b].num_tensors;
  }
  for (int w = 0; w < n; w++) {
    int b = walk_bucket[w];
    plan->tensors[plan->buckets[b].first + fill[b]++] = n - 1 - w;
  }
  for (int b = 0; b < num_buckets; b++) {
    int* members = plan->tensors + plan->buckets[b].first;
    qsort(members, (size_t)plan->buckets[b].num_tensors, sizeof(int), compare_int);
    size_t offset = 0;
    for (int j = 0; j < plan->buckets[b].num_tensors; j++) {
      plan->bucket_of[members[j]] = b;
      plan->offset_of[members[j]] = offset;
      offset += counts[members[j]];
    }
  }
  plan->num_buckets = num_buckets;
  plan->num_tensors = n;
done:
  free(bucket_bytes);
  free(walk_bucket);
  free(fill);
  return st;
}

void da_bucket_plan_free(da_bucket_plan* plan) {
  if (plan == NULL) return;
  free(plan->buckets);
  free(plan->tensors);
  free(plan->bucket_of);
  free(plan->offset_of);
  memset(plan, 0, sizeof *plan);
}
