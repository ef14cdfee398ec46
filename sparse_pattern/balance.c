/* Load balance: the lightest contiguous split of rows by work, and the adaptive
 * controller that moves density between ranks from measured times. */
#include <math.h>
#include <stdlib.h>

#include "common/error.h"
#include "sparse_pattern/pattern_internal.h"

/* Whether rows split into at most `parts` contiguous parts of work <= bound each
 * (greedy filling is optimal for a fixed bound). */
static int fits(const int64_t* work, int64_t rows, int parts, int64_t bound) {
  int used = 1;
  int64_t current = 0;
  for (int64_t r = 0; r < rows; r++) {
    if (work[r] > bound) return 0;
    if (current + work[r] > bound) {
      if (++used > parts) return 0;
      current = 0;
    }
    current += work[r];
  }
  return 1;
}

da_status da_pattern_partition_work(const int64_t* row_work, int64_t rows, int num_parts,
                                    double threshold, int64_t* boundaries,
                                    da_pattern_partition_report* report) {
  da_error_clear();
  if (rows < 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "rows=%lld must be >= 0", (long long)rows);
  if (rows > 0 && row_work == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "row_work must not be NULL");
  if (num_parts < 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "num_parts=%d must be >= 1", num_parts);
  if (boundaries == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "boundaries must not be NULL");
  if (!(threshold >= 0.0) || isinf(threshold))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "threshold=%g must be finite and >= 0",
                        threshold);
  int64_t total = 0, heaviest = 0;
  for (int64_t r = 0; r < rows; r++) {
    if (row_work[r] < 0)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT, "row_work[%lld]=%lld must be >= 0",
                          (long long)r, (long long)row_work[r]);
    if (row_work[r] > INT64_MAX - total)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT, "the sum of row_work overflows 64 bits");
    total += row_work[r];
    if (row_work[r] > heaviest) heaviest = row_work[r];
  }
  /* The least feasible bound lies in [max(heaviest, ceil(mean)), total]. */
  int64_t lo = (total + num_parts - 1) / num_parts;
  if (heaviest > lo) lo = heaviest;
  int64_t hi = total > lo ? total : lo;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (fits(row_work, rows, num_parts, mid))
      hi = mid;
    else
      lo = mid + 1;
  }
  const int64_t bound = lo;
  /* Greedy under the bound, cutting early when the remaining rows are just enough
   * to give every remaining part one (cuts never make a part heavier). */
  int part = 0;
  int64_t current = 0, part_rows = 0;
  boundaries[0] = 0;
  for (int64_t r = 0; r < rows; r++) {
    const int parts_after = num_parts - 1 - part;
    const int cut = part_rows > 0 && (current + row_work[r] > bound || rows - r <= parts_after);
    if (cut && part + 1 < num_parts) {
      boundaries[++part] = r;
      current = part_rows = 0;
    }
    current += row_work[r];
    part_rows++;
  }
  for (int p = part + 1; p <= num_parts; p++) boundaries[p] = rows;
  if (report != NULL) {
    report->total_work = total;
    report->max_part_work = 0;
    report->min_part_work = INT64_MAX;
    for (int p = 0; p < num_parts; p++) {
      int64_t sum = 0;
      for (int64_t r = boundaries[p]; r < boundaries[p + 1]; r++) sum += row_work[r];
      if (sum > report->max_part_work) report->max_part_work = sum;
      if (sum < report->min_part_work) report->min_part_work = sum;
    }
    report->mean_work = (double)total / num_parts;
    report->imbalance = total > 0 ? (double)report->max_part_work / report->mean_work - 1.0 : 0.0;
    report->bound_met = (double)report->max_part_work <= (1.0 + threshold) * report->mean_work;
  }
  return DA_STATUS_SUCCESS;
}

da_status da_pattern_row_work(const da_pattern_layout* layout, int64_t* row_work) {
  da_error_clear();
  if (layout == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "layout must not be NULL");
  if (row_work == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "row_work must not be NULL");
  const da_pattern_bsr* b = &layout->bsr;
  const int64_t rows = b->row_end - b->row_begin;
  for (int64_t r = 0; r < rows; r++) row_work[r] = 0;
  for (int h = 0; h < b->num_heads; h++) {
    const int64_t* off = b->row_offsets + (size_t)h * (size_t)(rows + 1);
    for (int64_t r = 0; r < rows; r++) row_work[r] += off[r + 1] - off[r];
  }
  return DA_STATUS_SUCCESS;
}

da_status da_pattern_partition_rows(const da_pattern_layout* layout, int num_parts,
                                    double threshold, int64_t* boundaries,
                                    da_pattern_partition_report* report) {
  da_error_clear();
  if (layout == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "layout must not be NULL");
  const int64_t rows = layout->bsr.row_end - layout->bsr.row_begin;
  int64_t* work = malloc(sizeof(int64_t) * (size_t)rows);
  if (work == NULL)
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "could not allocate the work of %lld rows",
                        (long long)rows);
  da_status st = da_pattern_row_work(layout, work);
  if (!st) st = da_pattern_partition_work(work, rows, num_parts, threshold, boundaries, report);
  if (!st)
    for (int p = 0; p <= num_parts; p++) boundaries[p] += layout->bsr.row_begin;
  free(work);
  return st;
}

da_status da_pattern_adapt_scales(const double* times_ms, int world_size, double threshold,
                                  double rate, double min_scale, double max_scale, double* scales,
                                  da_pattern_adapt_report* report) {
  da_error_clear();
  if (world_size < 1 || world_size > DA_PATTERN_MAX_WORLD_SIZE)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "world_size=%d is outside [1, %d]", world_size,
                        DA_PATTERN_MAX_WORLD_SIZE);
  if (times_ms == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "times_ms must not be NULL");
  if (scales == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "scales must not be NULL");
  if (!(threshold >= 0.0) || isinf(threshold))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "threshold=%g must be finite and >= 0",
                        threshold);
  if (!(rate >= 0.0 && rate < 1.0))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "rate=%g is outside [0, 1)", rate);
  if (!(min_scale > 0.0 && min_scale <= 1.0 && max_scale >= 1.0) || isinf(max_scale))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "min_scale=%g, max_scale=%g must satisfy 0 < min_scale <= 1 <= "
                        "max_scale < inf",
                        min_scale, max_scale);
  double sum = 0.0, slowest = 0.0;
  for (int p = 0; p < world_size; p++) {
    if (!(times_ms[p] >= 0.0) || isinf(times_ms[p]))
      return da_error_set(DA_STATUS_INVALID_ARGUMENT, "times_ms[%d]=%g must be finite and >= 0", p,
                          times_ms[p]);
    sum += times_ms[p];
    if (times_ms[p] > slowest) slowest = times_ms[p];
  }
  if (!(sum > 0.0))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "times_ms sum to 0: nothing was measured");
  const double mean = sum / world_size;
  da_pattern_adapt_report r = {mean, slowest / mean - 1.0, 0, 0, 0};
  r.triggered = r.imbalance > threshold;
  if (r.triggered) {
    for (int p = 0; p < world_size; p++) {
      double s = scales[p];
      if (times_ms[p] > (1.0 + threshold) * mean) {
        s *= 1.0 - rate;
        r.ranks_decreased++;
      } else if (times_ms[p] < (1.0 - threshold) * mean) {
        s *= 1.0 + rate;
        r.ranks_increased++;
      }
      scales[p] = s < min_scale ? min_scale : s > max_scale ? max_scale : s;
    }
  }
  if (report != NULL) *report = r;
  return DA_STATUS_SUCCESS;
}
