#include "tools/da/report.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "tools/da/sysinfo.h"

/* One timed pass as every format prints it. Throughput is taken at the median. */
typedef struct {
  const char* label; /* table */
  const char* key;   /* JSON object / CSV column prefix */
  const cli_time_stats* stats;
  double flops; /* effective FLOPs of one iteration of this pass */
} pass_row;

static void pass_rows(const cli_report* r, pass_row rows[3]) {
  rows[0] = (pass_row){"forward", "forward", &r->timings.forward, r->forward_flops};
  /* Backward alone does the 2.5x the semantics' 3.5x leaves after the forward. */
  rows[1] = (pass_row){"backward", "backward", &r->timings.backward,
                       r->forward_backward_flops - r->forward_flops};
  rows[2] = (pass_row){"forward+backward", "forward_backward", &r->timings.forward_backward,
                       r->forward_backward_flops};
}

static double tokens_per_s(const cli_report* r, const pass_row* row) {
  return (double)r->tokens / (row->stats->median_ms * 1e-3);
}

static double tflops(const pass_row* row) {
  return row->flops / (row->stats->median_ms * 1e-3) * 1e-12;
}

static double percent_of_peak(const cli_report* r, const pass_row* row) {
  return r->ceiling ? 100.0 * tflops(row) * 1e3 / r->ceiling->gflops : NAN;
}

static void format_patterns(const cli_options* o, char* text, size_t size, const char* sep) {
  size_t used = 0;
  text[0] = '\0';
  for (int i = 0; i < o->num_segment_lengths && used < size; ++i) {
    int r = i < o->num_dilation_rates ? o->dilation_rates[i] : 0;
    used += (size_t)snprintf(text + used, size - used, "%s%d/%d", i ? sep : "",
                             o->segment_lengths[i], r);
  }
}

static void format_list(const int* values, int count, char* text, size_t size) {
  size_t used = 0;
  text[0] = '\0';
  for (int i = 0; i < count && used < size; ++i)
    used += (size_t)snprintf(text + used, size - used, "%s%d", i ? "," : "", values[i]);
}

/* The backend rules of cli_report_init (report.h), once the parameters are valid. */
static int choose_backend(const char* command, const cli_options* o,
                          const da_attention_params* params, const char* no_gpu_reason,
                          cli_report* r) {
  r->backend = CLI_BACKEND_CPU;
  r->dtype = DA_DTYPE_F32;
  if (o->backend == CLI_BACKEND_CPU) return CLI_EXIT_OK;
  const da_dtype dtype = (da_dtype)o->dtype;
  if (r->gpu_name[0] == '\0') {
    if (o->backend == CLI_BACKEND_CUDA) {
      fprintf(stderr, "da %s: --backend cuda: there is no usable GPU (%s)\n", command,
              no_gpu_reason);
      return CLI_EXIT_FAIL;
    }
    snprintf(r->backend_note, sizeof r->backend_note, "no usable GPU (%.400s)", no_gpu_reason);
    return CLI_EXIT_OK;
  }
  const da_status status = da_attention_cuda_supported(params, dtype);
  if (status != DA_STATUS_SUCCESS) {
    if (o->backend == CLI_BACKEND_CUDA) {
      fprintf(stderr, "da %s: --backend cuda: the CUDA passes cannot run this configuration in "
              "%s: %s: %s\n", command, da_dtype_name(dtype), da_status_string(status),
              da_last_error());
      return CLI_EXIT_FAIL;
    }
    snprintf(r->backend_note, sizeof r->backend_note,
             "the CUDA passes cannot run this configuration in %s (%s: %.300s)",
             da_dtype_name(dtype), da_status_string(status), da_last_error());
    return CLI_EXIT_OK;
  }
  r->backend = CLI_BACKEND_CUDA;
  r->dtype = dtype;
  snprintf(r->device, sizeof r->device, "GPU: %s", r->gpu_name);
  return CLI_EXIT_OK;
}

int cli_report_init(const char* command, const cli_options* o, cli_report* r) {
  memset(r, 0, sizeof *r);
  r->command = command;
  r->options = o;
  r->device_tensor_mib = NAN;
  r->peak_pool_mib = NAN;
  r->threads = cli_set_threads(o->threads);
  char cpu[256];
  cli_cpu_model(cpu, sizeof cpu);
  snprintf(r->device, sizeof r->device, "CPU: %.200s (%d OpenMP thread%s)", cpu, r->threads,
           r->threads == 1 ? "" : "s");
  da_device_info gpu;
  char no_gpu_reason[256] = "";
  if (cli_probe_gpu(&gpu))
    snprintf(r->gpu_name, sizeof r->gpu_name, "%.200s (sm_%d%d, %d SMs, %.1f GiB)", gpu.name,
             gpu.sm_major, gpu.sm_minor, gpu.multiprocessors,
             (double)gpu.total_memory_bytes / (1024.0 * 1024.0 * 1024.0));
  else
    snprintf(no_gpu_reason, sizeof no_gpu_reason, "%s", da_last_error());

  const da_attention_params params = cli_options_params(o);
  const da_attention_batch batch = cli_options_batch(o);
  if (da_attention_validate(&params, &batch) != DA_STATUS_SUCCESS)
    return cli_usage_error(command, "invalid parameters: %s", da_last_error());
  r->softmax_scale =
      params.softmax_scale > 0 ? params.softmax_scale : 1.0f / sqrtf((float)params.head_dim);
  da_status status = da_attention_num_tokens(&batch, &r->tokens);
  if (status == DA_STATUS_SUCCESS) status = da_attention_count_pairs(&params, &batch, &r->pairs);
  if (status == DA_STATUS_SUCCESS)
    status = da_attention_count_flops(&params, &batch, 0, &r->forward_flops);
  if (status == DA_STATUS_SUCCESS)
    status = da_attention_count_flops(&params, &batch, 1, &r->forward_backward_flops);
  if (status != DA_STATUS_SUCCESS) {
    cli_library_error(command, "counting the work", status);
    return CLI_EXIT_FAIL;
  }
  return choose_backend(command, o, &params, no_gpu_reason, r);
}

void cli_report_print_gpu_notice(FILE* out, const cli_report* r) {
  if (r->backend == CLI_BACKEND_CPU && r->gpu_name[0])
    fprintf(out, "GPU found: %s; running the CPU backend: %s.\n", r->gpu_name,
            r->backend_note[0] ? r->backend_note : "--backend cpu");
}

static void format_backend(const cli_report* r, char* text, size_t size) {
  if (r->backend == CLI_BACKEND_CUDA)
    snprintf(text, size, "cuda: %s tensors, fp32 accumulation", da_dtype_name(r->dtype));
  else if (r->options->backend == CLI_BACKEND_CPU)
    snprintf(text, size, "cpu: f32 (--backend cpu)");
  else
    snprintf(text, size, "cpu: f32 (auto: %s)", r->backend_note);
}

void cli_report_print_table(FILE* out, const cli_report* r) {
  const cli_options* o = r->options;
  char patterns[DA_MAX_PATTERNS * 24];
  format_patterns(o, patterns, sizeof patterns, " ");
  char backend[sizeof r->backend_note + 32];
  format_backend(r, backend, sizeof backend);
  fprintf(out, "  %-16s %s\n", "device", r->device);
  fprintf(out, "  %-16s %s\n", "backend", backend);
  fprintf(out, "  %-16s n=%lld batch=%lld h=%d h_kv=%d d=%d mode=%s offset=%s causal=%s "
          "scale=%.6g\n", "configuration", (long long)o->seqlen, (long long)o->batch, o->heads,
          o->kv_heads ? o->kv_heads : o->heads, o->head_dim, cli_mode_name(o->mode),
          cli_offset_name(o->offset_policy), o->causal ? "yes" : "no", r->softmax_scale);
  fprintf(out, "  %-16s %s\n", "patterns (w/r)", patterns);
  fprintf(out, "  %-16s %.4g (query, key) pairs; %.4g effective GFLOP forward, %.4g forward+backward\n",
          "work", (double)r->pairs, r->forward_flops * 1e-9, r->forward_backward_flops * 1e-9);
  if (r->ceiling && r->ceiling->gpu)
    fprintf(out, "  %-16s %.1f TFLOP/s (%s, measured)\n", "GPU peak",
            r->ceiling->gflops * 1e-3, r->ceiling->isa);
  else if (r->ceiling)
    fprintf(out, "  %-16s %.1f GFLOP/s fp32 (%s, %d threads, measured)\n", "CPU peak",
            r->ceiling->gflops, r->ceiling->isa, r->ceiling->threads);
  fputc('\n', out);

  const int many = r->timings.forward.count > 1;
  fprintf(out, "  %-18s", "pass");
  if (many)
    fprintf(out, " %10s %10s %10s", "min ms", "median ms", "max ms");
  else
    fprintf(out, " %10s", "time ms");
  fprintf(out, " %12s %10s", "tokens/s", "TFLOP/s");
  if (r->ceiling) fprintf(out, " %9s", "% of peak");
  fputc('\n', out);
  pass_row rows[3];
  pass_rows(r, rows);
  for (int i = 0; i < 3; ++i) {
    const pass_row* row = &rows[i];
    if (row->stats->count == 0) continue;
    if (!many && i == 1) continue; /* demo: forward and forward+backward, as asked */
    fprintf(out, "  %-18s", row->label);
    if (many)
      fprintf(out, " %10.2f %10.2f %10.2f", row->stats->min_ms, row->stats->median_ms,
              row->stats->max_ms);
    else
      fprintf(out, " %10.2f", row->stats->median_ms);
    fprintf(out, " %12.0f %10.4f", tokens_per_s(r, row), tflops(row));
    if (r->ceiling) fprintf(out, " %8.1f%%", percent_of_peak(r, row));
    fputc('\n', out);
  }
  if (many)
    fprintf(out, "  (%d timed iterations after %d warm-up; tokens/s and TFLOP/s at the median)\n",
            r->timings.forward.count, r->timings.warmup);
  fputc('\n', out);
  fprintf(out, "  %-16s %.1f MiB (peak resident set of the process)\n", "peak memory",
          r->peak_rss_mib);
  if (!isnan(r->device_tensor_mib))
    fprintf(out, "  %-16s %.1f MiB tensors + %.1f MiB peak workspace (the device pool)\n",
            "GPU memory", r->device_tensor_mib, r->peak_pool_mib);

  const cli_check* c = r->check;
  if (c == NULL) return;
  fprintf(out, "  %-16s %s\n", "check", c->scope);
  for (int i = 0; i < c->num_rows; ++i) {
    char label[24];
    snprintf(label, sizeof label, "  %s", c->rows[i].name);
    fprintf(out, "  %-16s max abs err %.3g, %s %.3g\n", label, c->rows[i].max_abs_err,
            c->metric, c->rows[i].rel_err);
  }
  if (c->lse_inf_mismatches > 0)
    fprintf(out, "  %-16s %lld entries -inf or NaN on one side only\n", "  lse -inf",
            (long long)c->lse_inf_mismatches);
  else if (c->lse_inf_mismatches == 0)
    fprintf(out, "  %-16s at the same queries (no key) on both sides\n", "  lse -inf");
  if (c->nonfinite_outputs)
    fprintf(out, "  %-16s %lld NaN/inf values in out, dq, dk, dv\n", "  finiteness",
            (long long)c->nonfinite_outputs);
  else
    fprintf(out, "  %-16s every value of out, dq, dk, dv is finite\n", "  finiteness");
  fprintf(out, "  %-16s %s (tolerance %.0e on the %s%s%s)\n", "result", c->pass ? "PASS" : "FAIL",
          c->tolerance, c->metric, c->note ? "; " : "", c->note ? c->note : "");
}

static void add_number_or_null(cJSON* object, const char* key, double value) {
  if (isnan(value))
    cJSON_AddNullToObject(object, key);
  else
    cJSON_AddNumberToObject(object, key, value);
}

static const char* ceiling_kind(const cli_ceiling* c) {
  return c->gpu ? "gpu_bf16_gemm" : "cpu_fp32_fma";
}

static void add_pass_json(cJSON* root, const cli_report* r, const pass_row* row) {
  if (row->stats->count == 0) {
    cJSON_AddNullToObject(root, row->key);
    return;
  }
  cJSON* pass = cJSON_AddObjectToObject(root, row->key);
  cJSON_AddNumberToObject(pass, "min_ms", row->stats->min_ms);
  cJSON_AddNumberToObject(pass, "median_ms", row->stats->median_ms);
  cJSON_AddNumberToObject(pass, "max_ms", row->stats->max_ms);
  cJSON_AddNumberToObject(pass, "tokens_per_s", tokens_per_s(r, row));
  cJSON_AddNumberToObject(pass, "effective_flop", row->flops);
  cJSON_AddNumberToObject(pass, "effective_tflops", tflops(row));
  if (r->ceiling)
    cJSON_AddNumberToObject(pass, "percent_of_peak", percent_of_peak(r, row));
  else
    cJSON_AddNullToObject(pass, "percent_of_peak");
}

void cli_report_print_json(FILE* out, const cli_report* r) {
  const cli_options* o = r->options;
  cJSON* root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "command", r->command);
  cJSON_AddStringToObject(root, "library_version", da_version_string());
  cJSON_AddStringToObject(root, "device", r->device);
  cJSON_AddStringToObject(root, "backend", cli_backend_name(r->backend));
  cJSON_AddStringToObject(root, "dtype", da_dtype_name(r->dtype));
  if (r->backend_note[0])
    cJSON_AddStringToObject(root, "backend_note", r->backend_note);
  else
    cJSON_AddNullToObject(root, "backend_note");
  cJSON_AddNumberToObject(root, "threads", r->threads);
  if (r->gpu_name[0] && r->backend == CLI_BACKEND_CPU)
    cJSON_AddStringToObject(root, "gpu_found_unused", r->gpu_name);
  else
    cJSON_AddNullToObject(root, "gpu_found_unused");
  /* The keys of --config, resolved (h_kv, scale), so the object can be fed back. */
  cJSON* config = cJSON_AddObjectToObject(root, "config");
  cJSON_AddNumberToObject(config, "n", (double)o->seqlen);
  cJSON_AddNumberToObject(config, "batch", (double)o->batch);
  cJSON_AddNumberToObject(config, "heads", o->heads);
  cJSON_AddNumberToObject(config, "kv_heads", o->kv_heads ? o->kv_heads : o->heads);
  cJSON_AddNumberToObject(config, "head_dim", o->head_dim);
  cJSON_AddItemToObject(config, "segment_lengths",
                        cJSON_CreateIntArray(o->segment_lengths, o->num_segment_lengths));
  cJSON_AddItemToObject(config, "dilation_rates",
                        cJSON_CreateIntArray(o->dilation_rates, o->num_dilation_rates));
  cJSON_AddStringToObject(config, "mode", cli_mode_name(o->mode));
  cJSON_AddStringToObject(config, "offset", cli_offset_name(o->offset_policy));
  cJSON_AddBoolToObject(config, "causal", o->causal);
  cJSON_AddNumberToObject(config, "scale", r->softmax_scale);
  cJSON_AddStringToObject(config, "backend", cli_backend_name(o->backend));
  cJSON_AddStringToObject(config, "dtype", da_dtype_name((da_dtype)o->dtype));
  cJSON_AddNumberToObject(config, "warmup", o->warmup);
  cJSON_AddNumberToObject(config, "repeats", o->repeats);
  cJSON_AddBoolToObject(config, "backward", o->backward);
  cJSON_AddNumberToObject(config, "seed", (double)o->seed);
  cJSON_AddNumberToObject(root, "tokens", (double)r->tokens);
  cJSON_AddNumberToObject(root, "pairs", (double)r->pairs);
  pass_row rows[3];
  pass_rows(r, rows);
  for (int i = 0; i < 3; ++i) add_pass_json(root, r, &rows[i]);
  cJSON_AddNumberToObject(root, "peak_rss_mib", r->peak_rss_mib);
  add_number_or_null(root, "device_tensor_mib", r->device_tensor_mib);
  add_number_or_null(root, "peak_pool_mib", r->peak_pool_mib);
  if (r->ceiling) {
    cJSON_AddNumberToObject(root, "ceiling_gflops", r->ceiling->gflops);
    cJSON_AddStringToObject(root, "ceiling_isa", r->ceiling->isa);
    cJSON_AddStringToObject(root, "ceiling_kind", ceiling_kind(r->ceiling));
  } else {
    cJSON_AddNullToObject(root, "ceiling_gflops");
    cJSON_AddNullToObject(root, "ceiling_isa");
    cJSON_AddNullToObject(root, "ceiling_kind");
  }
  char* text = cJSON_Print(root);
  if (text != NULL) fprintf(out, "%s\n", text);
  cJSON_free(text);
  cJSON_Delete(root);
}

/* RFC 4180: quote a field holding a comma, quote or newline; double the quotes. */
static void csv_field(FILE* out, const char* text, int last) {
  if (strpbrk(text, ",\"\n") != NULL) {
    fputc('"', out);
    for (const char* c = text; *c; ++c) {
      if (*c == '"') fputc('"', out);
      fputc(*c, out);
    }
    fputc('"', out);
  } else {
    fputs(text, out);
  }
  fputc(last ? '\n' : ',', out);
}

void cli_report_print_csv(FILE* out, const cli_report* r) {
  static const char* const kPassColumns[] = {"min_ms", "median_ms", "max_ms", "tokens_per_s",
                                             "effective_tflops", "percent_of_peak"};
  enum { PASS_COLUMNS = sizeof kPassColumns / sizeof kPassColumns[0] };
  const char* head[] = {"device", "backend", "dtype", "threads", "n", "batch", "heads",
                        "kv_heads", "head_dim", "segment_lengths", "dilation_rates", "mode", "offset", "causal",
                        "softmax_scale", "warmup", "repeats", "pairs"};
  enum { HEAD_COLUMNS = sizeof head / sizeof head[0] };
  pass_row rows[3];
  pass_rows(r, rows);
  for (int i = 0; i < HEAD_COLUMNS; ++i) fprintf(out, "%s,", head[i]);
  for (int p = 0; p < 3; ++p)
    for (int i = 0; i < PASS_COLUMNS; ++i) fprintf(out, "%s_%s,", rows[p].key, kPassColumns[i]);
  fprintf(out, "peak_rss_mib,peak_pool_mib,ceiling_gflops\n");

  const cli_options* o = r->options;
  char cell[DA_MAX_PATTERNS * 12 + 16];
  csv_field(out, r->device, 0);
  fprintf(out, "%s,%s,", cli_backend_name(r->backend), da_dtype_name(r->dtype));
  fprintf(out, "%d,%lld,%lld,%d,%d,%d,", r->threads, (long long)o->seqlen, (long long)o->batch,
          o->heads, o->kv_heads ? o->kv_heads : o->heads, o->head_dim);
  format_list(o->segment_lengths, o->num_segment_lengths, cell, sizeof cell);
  csv_field(out, cell, 0);
  format_list(o->dilation_rates, o->num_dilation_rates, cell, sizeof cell);
  csv_field(out, cell, 0);
  fprintf(out, "%s,%s,%d,%.9g,%d,%d,%lld,", cli_mode_name(o->mode),
          cli_offset_name(o->offset_policy), o->causal ? 1 : 0, r->softmax_scale, o->warmup,
          o->repeats, (long long)r->pairs);
  for (int p = 0; p < 3; ++p) {
    const pass_row* row = &rows[p];
    if (row->stats->count == 0) {
      for (int i = 0; i < PASS_COLUMNS; ++i) fputc(',', out);
      continue;
    }
    fprintf(out, "%.6g,%.6g,%.6g,%.6g,%.6g,", row->stats->min_ms, row->stats->median_ms,
            row->stats->max_ms, tokens_per_s(r, row), tflops(row));
    if (r->ceiling) fprintf(out, "%.4g", percent_of_peak(r, row));
    fputc(',', out);
  }
  fprintf(out, "%.1f,", r->peak_rss_mib);
  if (!isnan(r->peak_pool_mib)) fprintf(out, "%.1f", r->peak_pool_mib);
  fputc(',', out);
  if (r->ceiling) fprintf(out, "%.1f", r->ceiling->gflops);
  fputc('\n', out);
}

void cli_ceiling_print(FILE* out, int output, const cli_ceiling* c) {
  char device[320];
  if (c->gpu) {
    da_device_info gpu;
    if (cli_probe_gpu(&gpu))
      snprintf(device, sizeof device, "%.255s", gpu.name);
    else
      snprintf(device, sizeof device, "unknown GPU");
  } else {
    cli_cpu_model(device, sizeof device);
  }
  const double per_thread = c->threads > 0 ? c->gflops / c->threads : NAN;
  if (output == CLI_OUTPUT_JSON) {
    cJSON* root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "ceiling_gflops", c->gflops);
    cJSON_AddStringToObject(root, "ceiling_kind", ceiling_kind(c));
    cJSON_AddStringToObject(root, "device", device);
    add_number_or_null(root, "gflops_per_thread", per_thread);
    cJSON_AddStringToObject(root, "isa", c->isa);
    cJSON_AddNumberToObject(root, "threads", c->threads);
    cJSON_AddNumberToObject(root, "seconds", c->seconds);
    char* text = cJSON_Print(root);
    if (text != NULL) fprintf(out, "%s\n", text);
    cJSON_free(text);
    cJSON_Delete(root);
  } else if (output == CLI_OUTPUT_CSV) {
    fprintf(out, "ceiling_gflops,ceiling_kind,device,gflops_per_thread,isa,threads,seconds\n");
    fprintf(out, "%.2f,%s,", c->gflops, ceiling_kind(c));
    csv_field(out, device, 0);
    if (c->threads > 0) fprintf(out, "%.2f", per_thread);
    fputc(',', out);
    csv_field(out, c->isa, 0);
    fprintf(out, "%d,%.3f\n", c->threads, c->seconds);
  } else if (c->gpu) {
    fprintf(out, "  %-16s %s\n", "device", device);
    fprintf(out, "  %-16s %.1f TFLOP/s dense bf16 GEMM\n", "peak measured", c->gflops * 1e-3);
    fprintf(out, "  %-16s %s; best timed call after 3 warm-ups (CUDA events), %.2f s in all\n",
            "how", c->isa, c->seconds);
  } else {
    fprintf(out, "  %-16s %s\n", "device", device);
    fprintf(out, "  %-16s %.1f GFLOP/s fp32 (%.1f per thread; %s, %d OpenMP threads)\n",
            "peak measured", c->gflops, per_thread, c->isa, c->threads);
    fprintf(out, "  %-16s 12 independent vector multiply-add chains per thread, all threads "
            "over a shared time window, best of 3 windows, %.2f s in all\n", "how", c->seconds);
  }
}

void cli_library_error(const char* command, const char* call, da_status status) {
  fprintf(stderr, "da %s: %s failed: %s: %s\n", command, call, da_status_string(status),
          da_last_error());
}

static void progress_draw(const cli_progress* p) {
  enum { WIDTH = 30 };
  int filled = p->total ? p->done * WIDTH / p->total : WIDTH;
  char bar[WIDTH + 1];
  for (int i = 0; i < WIDTH; ++i) bar[i] = i < filled ? '#' : '.';
  bar[WIDTH] = '\0';
  fprintf(stderr, "\r%s [%s] %d/%d", p->label, bar, p->done, p->total);
  fflush(stderr);
}

void cli_progress_begin(cli_progress* p, const char* label, int total_steps,
                        double estimated_total_ms) {
  memset(p, 0, sizeof *p);
  p->enabled = isatty(fileno(stderr)) && estimated_total_ms > 2000.0;
  p->total = total_steps;
  p->label = label;
}

void cli_progress_step(cli_progress* p) {
  ++p->done;
  if (p->enabled) progress_draw(p);
}

void cli_progress_end(cli_progress* p) {
  if (p->enabled) fprintf(stderr, "\r%*s\r", 60, "");
  p->enabled = 0;
}
