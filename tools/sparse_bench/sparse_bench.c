/* sparse_bench: how fast block-sparse layouts are generated, and that the time is
 * linear in the number of kept blocks.
 *
 * Main point: n = 1M tokens, block 128, 16 heads, the default config (densities
 * 0.4 / 0.1 / 0.05, LongNet's dilated patterns, window 4), on 1 rank and on 8 ranks
 * of one node (all rows, then one rank's own rows). Sweep: the same with n halved
 * three times (kept blocks fall 4x per step) and with the three level densities
 * scaled by 1/8 .. 2 at 1M, printing blocks/s per point: linear generation keeps
 * blocks/s flat.
 *
 * Every time is the minimum over --repeats runs of da_pattern_layout_create (OpenMP
 * threads: OMP_NUM_THREADS or --threads). Bytes are what the layout holds, checked
 * against da_pattern_count's prediction. The sweep ends with a least-squares fit of
 * time = a x (heads x rows) + b x kept blocks; every row keeps at least one block,
 * so that is linear in the kept blocks. The 1-minute load average is printed: on a
 * shared machine it explains most of the spread. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dist_config/da_config.h"
#include "sparse_pattern/da_pattern.h"

typedef struct {
  int64_t seqlen;
  int block_size;
  int heads;
  int causal;
  int repeats;
  int threads;
  int sweep;
} options;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void cpu_name(char* out, size_t size) {
  snprintf(out, size, "unknown CPU");
  FILE* f = fopen("/proc/cpuinfo", "r");
  if (f == NULL) return;
  char line[512];
  while (fgets(line, sizeof line, f) != NULL) {
    if (strncmp(line, "model name", 10) == 0) {
      const char* colon = strchr(line, ':');
      if (colon != NULL) {
        snprintf(out, size, "%s", colon + 2);
        out[strcspn(out, "\n")] = '\0';
      }
      break;
    }
  }
  fclose(f);
}

/* The pattern config of the default da_config with this world, n, heads, and the
 * three level densities multiplied by density_scale. */
static int make_config(const options* o, int world, int local_world, double density_scale,
                       da_pattern_config* p) {
  da_config c = da_config_default();
  c.attention.num_heads = o->heads;
  c.attention.causal = o->causal;
  c.sparse.block_size = o->block_size;
  c.sparse.local_density *= density_scale;
  c.sparse.global_density *= density_scale;
  c.sparse.inter_node_density *= density_scale;
  c.topology.world_size = world;
  c.topology.rank = 0;
  c.topology.local_world_size = local_world;
  if (da_config_to_pattern(&c, o->seqlen, p) != DA_STATUS_SUCCESS) {
    fprintf(stderr, "sparse_bench: %s\n", da_last_error());
    return 0;
  }
  return 1;
}

typedef struct {
  double seconds;
  da_pattern_stats stats;
  size_t predicted_bytes;
} result;

static int run(const da_pattern_config* p, int repeats, result* r) {
  da_pattern_stats predicted;
  if (da_pattern_count(p, &predicted) != DA_STATUS_SUCCESS) {
    fprintf(stderr, "sparse_bench: %s\n", da_last_error());
    return 0;
  }
  r->predicted_bytes = predicted.bytes;
  r->seconds = 1e30;
  for (int k = 0; k < repeats; k++) {
    da_pattern_layout* layout = NULL;
    const double t0 = now_s();
    da_status st = da_pattern_layout_create(p, &layout);
    const double t = now_s() - t0;
    if (st != DA_STATUS_SUCCESS) {
      fprintf(stderr, "sparse_bench: %s\n", da_last_error());
      return 0;
    }
    if (t < r->seconds) r->seconds = t;
    da_pattern_layout_stats(layout, &r->stats);
    da_pattern_layout_release(layout);
  }
  if (r->stats.bytes != r->predicted_bytes) {
    fprintf(stderr, "sparse_bench: layout holds %zu bytes, da_pattern_count said %zu\n",
            r->stats.bytes, r->predicted_bytes);
    return 0;
  }
  return 1;
}

static double level_density(const da_pattern_stats* s, da_pattern_level l) {
  return s->domain[l] > 0 ? (double)s->kept[l] / (double)s->domain[l] : 0.0;
}

static void print_row(const char* label, const da_pattern_config* p, const result* r) {
  const da_pattern_stats* s = &r->stats;
  printf("%-26s %8lld %6d %5lld %12lld %9.1f %9.3f %8.1f  %.3f %.3f %.3f  %.4f\n", label,
         (long long)p->seqlen, p->world_size, (long long)s->rows, (long long)s->nnz,
         (double)s->bytes / (1 << 20), r->seconds * 1e3, (double)s->nnz / r->seconds / 1e6,
         level_density(s, DA_PATTERN_LEVEL_LOCAL), (double)s->global_indices / s->num_blocks,
         level_density(s, DA_PATTERN_LEVEL_INTER_NODE), s->density);
}

static void print_header(void) {
  printf("%-26s %8s %6s %5s %12s %9s %9s %8s  %-17s  %s\n", "point", "n", "ranks", "rows",
         "kept blocks", "MiB", "ms", "Mblk/s", "local glob inter", "overall");
}

/* The sweep's points, for blocks/s extremes and the fit
 * time = a x (heads x rows) + b x kept blocks. */
typedef struct {
  int points;
  double rows[16], kept[16], seconds[16];
} sweep_fit;

static void add_point(sweep_fit* f, const da_pattern_config* p, const result* r) {
  if (f->points == 16) return;
  f->rows[f->points] = (double)r->stats.rows * p->num_heads;
  f->kept[f->points] = (double)r->stats.nnz;
  f->seconds[f->points++] = r->seconds;
}

/* Least squares on relative errors (each point weighted by 1 / time^2). */
static void print_fit(const sweep_fit* f) {
  double lo = 1e300, hi = 0.0, srr = 0, srk = 0, skk = 0, srt = 0, skt = 0;
  for (int k = 0; k < f->points; k++) {
    const double rate = f->kept[k] / f->seconds[k];
    lo = rate < lo ? rate : lo;
    hi = rate > hi ? rate : hi;
    const double w = 1.0 / (f->seconds[k] * f->seconds[k]);
    srr += w * f->rows[k] * f->rows[k];
    srk += w * f->rows[k] * f->kept[k];
    skk += w * f->kept[k] * f->kept[k];
    srt += w * f->rows[k] * f->seconds[k];
    skt += w * f->kept[k] * f->seconds[k];
  }
  const double det = srr * skk - srk * srk;
  const double a = (srt * skk - skt * srk) / det, b = (skt * srr - srt * srk) / det;
  double worst = 0.0;
  for (int k = 0; k < f->points; k++) {
    const double e = fabs(a * f->rows[k] + b * f->kept[k] - f->seconds[k]) / f->seconds[k];
    worst = e > worst ? e : worst;
  }
  printf("\nblocks/s over the sweep: %.1f .. %.1f M (max/min %.2f)\n", lo / 1e6, hi / 1e6, hi / lo);
  printf("fit: time = %.3f us x (heads x rows) + %.2f ns x kept blocks; worst point %.0f%% off\n",
         a * 1e6, b * 1e9, worst * 100.0);
}

static void usage(FILE* out) {
  fprintf(out,
          "usage: sparse_bench [--seqlen N] [--block B] [--heads H] [--causal] [--repeats R]\n"
          "                    [--threads T] [--no-sweep]\n"
          "Times da_pattern_layout_create for the default config (n = 1048576, B = 128,\n"
          "16 heads, densities 0.4 / 0.1 / 0.05, LongNet patterns) on 1 rank, on 8 ranks\n"
          "of one node (all rows and rank 0's rows), then a sweep over n and over the\n"
          "densities (all three scaled) showing blocks/s per point.\n");
}

int main(int argc, char** argv) {
  options o = {1 << 20, 128, 16, 0, 3, 0, 1};
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "--causal") == 0) {
      o.causal = 1;
    } else if (strcmp(a, "--no-sweep") == 0) {
      o.sweep = 0;
    } else if (v != NULL && strcmp(a, "--seqlen") == 0) {
      o.seqlen = atoll(v), i++;
    } else if (v != NULL && strcmp(a, "--block") == 0) {
      o.block_size = atoi(v), i++;
    } else if (v != NULL && strcmp(a, "--heads") == 0) {
      o.heads = atoi(v), i++;
    } else if (v != NULL && strcmp(a, "--repeats") == 0) {
      o.repeats = atoi(v), i++;
    } else if (v != NULL && strcmp(a, "--threads") == 0) {
      o.threads = atoi(v), i++;
    } else {
      fprintf(stderr, "sparse_bench: unknown or incomplete argument '%s'\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (o.repeats < 1 || o.seqlen < 1 || o.heads < 1) {
    fprintf(stderr, "sparse_bench: --repeats, --seqlen and --heads must be >= 1\n");
    return 2;
  }
  if (o.threads > 0) omp_set_num_threads(o.threads);
  char cpu[256];
  cpu_name(cpu, sizeof cpu);
  double load = -1.0;
  FILE* loadavg = fopen("/proc/loadavg", "r");
  if (loadavg != NULL) {
    if (fscanf(loadavg, "%lf", &load) != 1) load = -1.0;
    fclose(loadavg);
  }
  printf("sparse_bench: layout generation, %s, %d OpenMP threads, min of %d runs, load %.2f\n", cpu,
         omp_get_max_threads(), o.repeats, load);
  printf(
      "config: n=%lld B=%d heads=%d causal=%d, defaults (density local 0.4, global 0.1, "
      "inter-node 0.05, window 4, LongNet w=2048..32768 r=1..16)\n\n",
      (long long)o.seqlen, o.block_size, o.heads, o.causal);
  print_header();

  da_pattern_config p;
  result r;
  if (!make_config(&o, 1, 1, 1.0, &p) || !run(&p, o.repeats, &r)) return 1;
  print_row("1 rank, all rows", &p, &r);
  if (!make_config(&o, 8, 8, 1.0, &p) || !run(&p, o.repeats, &r)) return 1;
  print_row("8 ranks, all rows", &p, &r);
  if (da_pattern_shard_rows(&p, 0, &p.row_begin, &p.row_end) != DA_STATUS_SUCCESS ||
      !run(&p, o.repeats, &r))
    return 1;
  print_row("8 ranks, rank 0's rows", &p, &r);
  if (!o.sweep) return 0;

  printf("\nsweep (8 ranks, all rows): blocks/s should stay flat as kept blocks change\n");
  print_header();
  sweep_fit fit = {0};
  for (int step = 3; step >= 0; step--) {
    options smaller = o;
    smaller.seqlen = o.seqlen >> step;
    char label[64];
    snprintf(label, sizeof label, "n = %lld", (long long)smaller.seqlen);
    if (!make_config(&smaller, 8, 8, 1.0, &p) || !run(&p, o.repeats, &r)) return 1;
    print_row(label, &p, &r);
    add_point(&fit, &p, &r);
  }
  static const double kScale[] = {0.125, 0.25, 0.5, 2.0};
  for (int k = 0; k < 4; k++) {
    char label[64];
    snprintf(label, sizeof label, "densities x %.3g", kScale[k]);
    if (!make_config(&o, 8, 8, kScale[k], &p) || !run(&p, o.repeats, &r)) return 1;
    print_row(label, &p, &r);
    add_point(&fit, &p, &r);
  }
  print_fit(&fit);
  return 0;
}
