/* Layouts: row quotas (how many blocks each level keeps in each row), building the
 * BSR arrays, caller-made layouts, reference counting and the views.
 *
 * Quotas are error-diffused over each rank's rows: row i of a shard keeps
 * R(d (S + D_i)) - R(d S) blocks of its domain D_i, S being the domain summed over
 * the shard's earlier rows and R(x) = floor(x + 0.5). Each row is then within one
 * block of d D_i and each rank's rows within half a block of d sum(D) in total; one
 * multiply and one rounding per value, so every rank computes the same integers. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "sparse_pattern/pattern_internal.h"

/* Layouts smaller than this are built on the calling thread. */
#define DA_PATTERN_PARALLEL_BLOCKS (1 << 18)

static int64_t round_count(double density, int64_t count) {
  return (int64_t)floor(density * (double)count + 0.5);
}

static double rank_density(const da_pattern_plan* plan, double density, int64_t rank) {
  if (plan->scales == NULL) return density;
  double d = density * plan->scales[rank];
  return d > 1.0 ? 1.0 : d;
}

static int64_t non_global_in(const da_pattern_plan* plan, int64_t a, int64_t b, int64_t hi) {
  if (b > hi) b = hi;
  if (b <= a) return 0;
  return (b - a) - (da_pattern_globals_below(plan, b) - da_pattern_globals_below(plan, a));
}

size_t da_pattern_layout_bytes(int64_t heads, int64_t rows, int64_t nnz) {
  return sizeof(struct da_pattern_layout) + sizeof(int64_t) * (size_t)heads * (size_t)(rows + 1) +
         (sizeof(int32_t) + sizeof(uint8_t)) * (size_t)nnz;
}

void da_pattern_row_quotas(const da_pattern_plan* plan, da_pattern_row_quota* quotas,
                           da_pattern_stats* stats) {
  memset(stats, 0, sizeof *stats);
  stats->num_blocks = plan->nb;
  stats->rows = plan->row_end - plan->row_begin;
  stats->global_indices = plan->g;
  stats->min_row_blocks = INT64_MAX;
  int64_t per_head[DA_PATTERN_NUM_LEVELS] = {0}, domain[DA_PATTERN_NUM_LEVELS] = {0};
  int64_t allowed = 0, forced = 0;
  int64_t owner = da_pattern_owner(plan, plan->row_begin);
  int64_t shard_end = da_pattern_shard_begin(plan, owner + 1);
  int64_t local_sum = 0, inter_sum = 0;
  for (int64_t i = da_pattern_shard_begin(plan, owner); i < plan->row_end; i++) {
    if (i == shard_end) { /* next shard: restart the error diffusion */
      owner = da_pattern_owner(plan, i);
      shard_end = da_pattern_shard_begin(plan, owner + 1);
      local_sum = inter_sum = 0;
    }
    const int64_t hi = da_pattern_allowed_end(plan, i);
    da_pattern_row_quota q;
    memset(&q, 0, sizeof q);
    if (da_pattern_is_global(plan, i)) {
      q.is_global_row = 1;
      q.global = hi;
    } else {
      const int64_t s = da_pattern_shard_begin(plan, owner);
      const int64_t node = owner / plan->Lw;
      const int64_t node_last = (node + 1) * plan->Lw < plan->W ? (node + 1) * plan->Lw : plan->W;
      const int64_t ns = da_pattern_shard_begin(plan, node * plan->Lw);
      const int64_t ne = da_pattern_shard_begin(plan, node_last);
      q.local_domain = non_global_in(plan, s, shard_end, hi);
      q.inter_domain = non_global_in(plan, ns, s, hi) + non_global_in(plan, shard_end, ne, hi);
      if (plan->type != DA_PATTERN_NODE_LOCAL)
        q.inter_domain += non_global_in(plan, 0, ns, hi) + non_global_in(plan, ne, plan->nb, hi);
      const double dl = rank_density(plan, plan->local_density, owner);
      const double dx = rank_density(plan, plan->inter_node_density, owner);
      q.local = round_count(dl, local_sum + q.local_domain) - round_count(dl, local_sum);
      q.inter = round_count(dx, inter_sum + q.inter_domain) - round_count(dx, inter_sum);
      local_sum += q.local_domain;
      inter_sum += q.inter_domain;
      q.global = da_pattern_globals_below(plan, hi);
      if (q.global + q.local + q.inter == 0) { /* every row keeps a block: its diagonal */
        q.local = 1;
        q.forced = 1;
      }
    }
    if (i < plan->row_begin) continue;
    if (quotas != NULL) quotas[i - plan->row_begin] = q;
    const int64_t total = q.global + q.local + q.inter;
    per_head[DA_PATTERN_LEVEL_LOCAL] += q.local;
    per_head[DA_PATTERN_LEVEL_INTER_NODE] += q.inter;
    per_head[DA_PATTERN_LEVEL_GLOBAL] += q.global;
    domain[DA_PATTERN_LEVEL_LOCAL] += q.local_domain;
    domain[DA_PATTERN_LEVEL_INTER_NODE] += q.inter_domain;
    allowed += hi;
    forced += q.forced;
    if (total < stats->min_row_blocks) stats->min_row_blocks = total;
    if (total > stats->max_row_blocks) stats->max_row_blocks = total;
  }
  domain[DA_PATTERN_LEVEL_GLOBAL] = per_head[DA_PATTERN_LEVEL_GLOBAL];
  for (int l = 0; l < DA_PATTERN_NUM_LEVELS; l++) {
    stats->kept[l] = per_head[l] * plan->H;
    stats->domain[l] = domain[l] * plan->H;
    stats->nnz += stats->kept[l];
  }
  stats->allowed = allowed * plan->H;
  stats->forced_rows = forced * plan->H;
  stats->density = stats->allowed > 0 ? (double)stats->nnz / (double)stats->allowed : 0.0;
  stats->bytes = da_pattern_layout_bytes(plan->H, stats->rows, stats->nnz);
}

/* Per-head blocks must fit the arrays: nnz x H without overflow, offsets int64. */
static da_status check_size(const da_pattern_plan* plan, const da_pattern_stats* stats) {
  const double bytes = (double)stats->nnz * 5.0 + 8.0 * (double)plan->H * (double)(stats->rows + 1);
  if (bytes > (double)(SIZE_MAX / 2))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "the layout would hold %.3g bytes (%lld blocks), beyond the address "
                        "space",
                        bytes, (long long)stats->nnz);
  return DA_STATUS_SUCCESS;
}

da_status da_pattern_count(const da_pattern_config* config, da_pattern_stats* stats) {
  da_error_clear();
  if (stats == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "stats must not be NULL");
  da_pattern_plan plan;
  da_status st = da_pattern_plan_init(config, &plan);
  if (st) return st;
  da_pattern_row_quotas(&plan, NULL, stats);
  return DA_STATUS_SUCCESS;
}

static da_pattern_layout* layout_alloc(int64_t heads, int64_t rows, int64_t nnz) {
  da_pattern_layout* layout = calloc(1, sizeof *layout);
  if (layout == NULL) return NULL;
  atomic_init(&layout->refs, 1);
  layout->row_offsets = malloc(sizeof(int64_t) * (size_t)heads * (size_t)(rows + 1));
  layout->col_indices = malloc(sizeof(int32_t) * (size_t)(nnz > 0 ? nnz : 1));
  layout->levels = malloc((size_t)(nnz > 0 ? nnz : 1));
  if (layout->row_offsets == NULL || layout->col_indices == NULL || layout->levels == NULL) {
    free(layout->row_offsets);
    free(layout->col_indices);
    free(layout->levels);
    free(layout);
    return NULL;
  }
  layout->bsr.row_offsets = layout->row_offsets;
  layout->bsr.col_indices = layout->col_indices;
  layout->bsr.levels = layout->levels;
  layout->bsr.nnz = nnz;
  return layout;
}

da_status da_pattern_layout_create(const da_pattern_config* config, da_pattern_layout** layout) {
  da_error_clear();
  if (layout == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "layout must not be NULL");
  *layout = NULL;
  da_pattern_plan plan;
  da_status st = da_pattern_plan_init(config, &plan);
  if (st) return st;
  const int64_t rows = plan.row_end - plan.row_begin;
  da_pattern_row_quota* quotas = malloc(sizeof *quotas * (size_t)rows);
  int64_t* prefix = malloc(sizeof(int64_t) * (size_t)(rows + 1));
  if (quotas == NULL || prefix == NULL) {
    free(quotas);
    free(prefix);
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "could not allocate the quotas of %lld rows",
                        (long long)rows);
  }
  da_pattern_stats stats;
  da_pattern_row_quotas(&plan, quotas, &stats);
  st = check_size(&plan, &stats);
  da_pattern_layout* out = NULL;
  if (!st) {
    out = layout_alloc(plan.H, rows, stats.nnz);
    if (out == NULL)
      st = da_error_set(DA_STATUS_OUT_OF_MEMORY, "could not allocate a layout of %zu bytes",
                        stats.bytes);
  }
  if (st) goto done;
  prefix[0] = 0;
  for (int64_t r = 0; r < rows; r++)
    prefix[r + 1] = prefix[r] + quotas[r].global + quotas[r].local + quotas[r].inter;
  const int64_t per_head = prefix[rows];
  for (int h = 0; h < plan.H; h++)
    for (int64_t r = 0; r <= rows; r++)
      out->row_offsets[(size_t)h * (size_t)(rows + 1) + (size_t)r] =
          (int64_t)h * per_head + prefix[r];

  int failed = 0;
  /* Threads only pay off past a few hundred thousand blocks (and spin-waiting
   * threads hurt on busy machines). */
  const int parallel = stats.nnz >= DA_PATTERN_PARALLEL_BLOCKS;
#pragma omp parallel if (parallel)
  {
    da_pattern_scratch scratch;
    int ok = da_pattern_scratch_init(&scratch, plan.nb) == DA_STATUS_SUCCESS;
    if (!ok) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for collapse(2) schedule(dynamic, 16)
    for (int h = 0; h < plan.H; h++) {
      for (int64_t r = 0; r < rows; r++) {
        if (!ok) continue;
        const int64_t at = (int64_t)h * per_head + prefix[r];
        da_pattern_build_row(&plan, h, plan.row_begin + r, &quotas[r], &scratch,
                             out->col_indices + at, out->levels + at);
      }
    }
    da_pattern_scratch_free(&scratch);
  }
  if (failed) {
    st = da_error_set(DA_STATUS_OUT_OF_MEMORY,
                      "could not allocate %lld bytes of row scratch per thread",
                      (long long)(plan.nb * 6 * (int64_t)sizeof(int32_t)));
    goto done;
  }
  out->bsr.seqlen = plan.n;
  out->bsr.block_size = (int)plan.B;
  out->bsr.num_heads = plan.H;
  out->bsr.causal = plan.causal;
  out->bsr.num_blocks = plan.nb;
  out->bsr.row_begin = plan.row_begin;
  out->bsr.row_end = plan.row_end;
  out->stats = stats;
  *layout = out;
  out = NULL;

done:
  da_pattern_layout_release(out);
  free(quotas);
  free(prefix);
  return st;
}

da_pattern_layout* da_pattern_layout_retain(da_pattern_layout* layout) {
  if (layout != NULL) atomic_fetch_add_explicit(&layout->refs, 1, memory_order_relaxed);
  return layout;
}

void da_pattern_layout_release(da_pattern_layout* layout) {
  if (layout == NULL) return;
  if (atomic_fetch_sub_explicit(&layout->refs, 1, memory_order_acq_rel) != 1) return;
  free(layout->row_offsets);
  free(layout->col_indices);
  free(layout->levels);
  free(layout);
}

da_status da_pattern_layout_bsr(const da_pattern_layout* layout, da_pattern_bsr* bsr) {
  da_error_clear();
  if (layout == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "layout must not be NULL");
  if (bsr == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "bsr must not be NULL");
  *bsr = layout->bsr;
  return DA_STATUS_SUCCESS;
}

da_status da_pattern_layout_stats(const da_pattern_layout* layout, da_pattern_stats* stats) {
  da_error_clear();
  if (layout == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "layout must not be NULL");
  if (stats == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "stats must not be NULL");
  *stats = layout->stats;
  return DA_STATUS_SUCCESS;
}

/* ------------------------------------------------------- caller-made BSR */

static da_status check_bsr(const da_pattern_bsr* b) {
  if (b->seqlen < 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "bsr->seqlen=%lld must be >= 1",
                        (long long)b->seqlen);
  if (b->block_size < 1 || b->block_size > DA_PATTERN_MAX_BLOCK_SIZE ||
      (b->block_size & (b->block_size - 1)) != 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "bsr->block_size=%d must be a power of two in [1, %d]", b->block_size,
                        DA_PATTERN_MAX_BLOCK_SIZE);
  const int64_t nb = (b->seqlen + b->block_size - 1) / b->block_size;
  if (nb > INT32_MAX)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "bsr has %lld blocks, more than %d",
                        (long long)nb, INT32_MAX);
  if (b->num_blocks != nb)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "bsr->num_blocks=%lld is not ceil(seqlen / block_size)=%lld",
                        (long long)b->num_blocks, (long long)nb);
  if (b->num_heads < 1 || b->num_heads > DA_PATTERN_MAX_HEADS)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "bsr->num_heads=%d is outside [1, %d]",
                        b->num_heads, DA_PATTERN_MAX_HEADS);
  if (b->row_begin < 0 || b->row_begin >= b->row_end || b->row_end > nb)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "bsr->row_begin=%lld, row_end=%lld is not a non-empty range within "
                        "[0, %lld]",
                        (long long)b->row_begin, (long long)b->row_end, (long long)nb);
  if (b->row_offsets == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "bsr->row_offsets must not be NULL");
  if (b->nnz < 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "bsr->nnz=%lld must be >= 0",
                        (long long)b->nnz);
  if (b->nnz > 0 && b->col_indices == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "bsr->col_indices must not be NULL");
  const int64_t rows = b->row_end - b->row_begin;
  if (b->row_offsets[0] != 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "bsr->row_offsets[0]=%lld must be 0",
                        (long long)b->row_offsets[0]);
  for (int h = 0; h < b->num_heads; h++) {
    const int64_t* off = b->row_offsets + (size_t)h * (size_t)(rows + 1);
    if (h > 0 && off[0] != off[-1])
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "bsr->row_offsets: head %d starts at %lld but head %d ended at %lld", h,
                          (long long)off[0], h - 1, (long long)off[-1]);
    for (int64_t r = 0; r < rows; r++) {
      const int64_t i = b->row_begin + r;
      if (off[r + 1] < off[r] || off[r + 1] > b->nnz)
        return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                            "bsr->row_offsets of head %d, row %lld: [%lld, %lld) is not a "
                            "range within [0, nnz=%lld]",
                            h, (long long)i, (long long)off[r], (long long)off[r + 1],
                            (long long)b->nnz);
      for (int64_t x = off[r]; x < off[r + 1]; x++) {
        const int64_t j = b->col_indices[x];
        if (j < 0 || j >= nb || (x > off[r] && j <= b->col_indices[x - 1]))
          return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                              "bsr->col_indices[%lld]=%lld (head %d, row %lld) must be in "
                              "[0, %lld) and greater than the previous column of its row",
                              (long long)x, (long long)j, h, (long long)i, (long long)nb);
        if (b->causal && j > i)
          return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                              "bsr->col_indices[%lld]=%lld is above the diagonal of row %lld "
                              "of a causal layout",
                              (long long)x, (long long)j, (long long)i);
        if (b->levels != NULL && b->levels[x] >= DA_PATTERN_NUM_LEVELS)
          return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                              "bsr->levels[%lld]=%d is not a da_pattern_level (0..%d)",
                              (long long)x, b->levels[x], DA_PATTERN_NUM_LEVELS - 1);
      }
    }
  }
  const int64_t last = b->row_offsets[(size_t)b->num_heads * (size_t)(rows + 1) - 1];
  if (last != b->nnz)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "bsr->row_offsets ends at %lld but nnz=%lld",
                        (long long)last, (long long)b->nnz);
  return DA_STATUS_SUCCESS;
}

da_status da_pattern_layout_from_bsr(const da_pattern_bsr* bsr, da_pattern_layout** layout) {
  da_error_clear();
  if (layout == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "layout must not be NULL");
  *layout = NULL;
  if (bsr == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "bsr must not be NULL");
  da_status st = check_bsr(bsr);
  if (st) return st;
  const int64_t rows = bsr->row_end - bsr->row_begin;
  da_pattern_layout* out = layout_alloc(bsr->num_heads, rows, bsr->nnz);
  if (out == NULL)
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "could not allocate a layout of %zu bytes",
                        da_pattern_layout_bytes(bsr->num_heads, rows, bsr->nnz));
  memcpy(out->row_offsets, bsr->row_offsets,
         sizeof(int64_t) * (size_t)bsr->num_heads * (size_t)(rows + 1));
  if (bsr->nnz > 0) memcpy(out->col_indices, bsr->col_indices, sizeof(int32_t) * (size_t)bsr->nnz);
  if (bsr->levels != NULL)
    memcpy(out->levels, bsr->levels, (size_t)bsr->nnz);
  else
    memset(out->levels, DA_PATTERN_LEVEL_LOCAL, (size_t)bsr->nnz);
  out->bsr = *bsr;
  out->bsr.row_offsets = out->row_offsets;
  out->bsr.col_indices = out->col_indices;
  out->bsr.levels = out->levels;

  da_pattern_stats* s = &out->stats;
  memset(s, 0, sizeof *s);
  s->num_blocks = bsr->num_blocks;
  s->rows = rows;
  s->nnz = bsr->nnz;
  s->min_row_blocks = INT64_MAX;
  for (int64_t x = 0; x < bsr->nnz; x++) s->kept[out->levels[x]]++;
  for (int l = 0; l < DA_PATTERN_NUM_LEVELS; l++) s->domain[l] = s->kept[l];
  for (int h = 0; h < bsr->num_heads; h++)
    for (int64_t r = 0; r < rows; r++) {
      const int64_t* off = out->row_offsets + (size_t)h * (size_t)(rows + 1);
      const int64_t count = off[r + 1] - off[r];
      if (count < s->min_row_blocks) s->min_row_blocks = count;
      if (count > s->max_row_blocks) s->max_row_blocks = count;
      s->allowed += bsr->causal ? bsr->row_begin + r + 1 : bsr->num_blocks;
    }
  s->density = s->allowed > 0 ? (double)s->nnz / (double)s->allowed : 0.0;
  s->bytes = da_pattern_layout_bytes(bsr->num_heads, rows, bsr->nnz);
  *layout = out;
  return DA_STATUS_SUCCESS;
}
