#include "tools/da/options.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
  KIND_INT,    /* int field */
  KIND_INT64,  /* int64_t field */
  KIND_DOUBLE, /* double field, finite, >= 0 */
  KIND_LIST,   /* int[DA_MAX_PATTERNS] field plus an int count field */
  KIND_SWITCH, /* no value on the command line, a bool in JSON: field = switch_value */
  KIND_CHOICE, /* one name of `choices`, an int field */
  KIND_PATH,   /* const char* field pointing into argv */
  KIND_HELP
} option_kind;

typedef struct {
  const char* name;
  int value;
} option_choice;

typedef struct {
  const char* flag;     /* --flag on the command line */
  const char* json_key; /* key in a --config file; NULL: command line only */
  option_kind kind;
  unsigned commands; /* cli_command bits that accept it */
  int workload;      /* describes the workload rather than how to run or print it */
  size_t field;      /* offsetof(cli_options, ...) */
  size_t count_field; /* KIND_LIST: offsetof the element count */
  int64_t min, max;   /* integers and list elements */
  int switch_value;
  const option_choice* choices;
  const char* metavar;
  const char* help;
  const char* default_text; /* for --help when the default needs words */
} option_spec;

static const option_choice kModeChoices[] = {
    {"longnet", DA_MODE_LONGNET}, {"head-group", DA_MODE_HEAD_GROUP}, {NULL, 0}};
static const option_choice kOffsetChoices[] = {{"default", DA_OFFSET_DEFAULT},
                                               {"head", DA_OFFSET_HEAD},
                                               {"group", DA_OFFSET_GROUP},
                                               {"block", DA_OFFSET_BLOCK},
                                               {NULL, 0}};
static const option_choice kBackendChoices[] = {{"auto", CLI_BACKEND_AUTO},
                                                {"cpu", CLI_BACKEND_CPU},
                                                {"cuda", CLI_BACKEND_CUDA},
                                                {NULL, 0}};
static const option_choice kDtypeChoices[] = {
    {"bf16", DA_DTYPE_BF16}, {"f16", DA_DTYPE_F16}, {NULL, 0}};
static const option_choice kPassChoices[] = {{"fwd", 0}, {"fwdbwd", 1}, {NULL, 0}};

#define DEMO_AND_BENCH (CLI_CMD_DEMO | CLI_CMD_BENCH)
#define FIELD(name) offsetof(cli_options, name)

/* Values the CLI alone cares about carry their real minimum; the attention
 * parameters only refuse negatives here and leave every other rule (zero heads,
 * r > w, mismatched lists, ...) to da_attention_validate, which owns them. */
static const option_spec kOptions[] = {
    {.flag = "n", .json_key = "n", .kind = KIND_INT64, .commands = DEMO_AND_BENCH,
     .workload = 1, .field = FIELD(seqlen), .min = 0, .max = INT64_MAX, .metavar = "N",
     .help = "tokens per sequence; need not be a multiple of any segment length"},
    {.flag = "batch", .json_key = "batch", .kind = KIND_INT64, .commands = CLI_CMD_BENCH,
     .workload = 1, .field = FIELD(batch), .min = 0, .max = INT64_MAX, .metavar = "B",
     .help = "sequences per batch"},
    {.flag = "heads", .json_key = "heads", .kind = KIND_INT, .commands = CLI_CMD_BENCH,
     .workload = 1, .field = FIELD(heads), .min = 0, .max = INT_MAX, .metavar = "H",
     .help = "query heads h"},
    {.flag = "kv-heads", .json_key = "kv_heads", .kind = KIND_INT, .commands = CLI_CMD_BENCH,
     .workload = 1, .field = FIELD(kv_heads), .min = 0, .max = INT_MAX, .metavar = "H_KV",
     .help = "key/value heads, h % h_kv == 0 (GQA/MQA); 0 = h"},
    {.flag = "head-dim", .json_key = "head_dim", .kind = KIND_INT, .commands = CLI_CMD_BENCH,
     .workload = 1, .field = FIELD(head_dim), .min = 0, .max = INT_MAX, .metavar = "D",
     .help = "head dimension d"},
    {.flag = "segments", .json_key = "segment_lengths", .kind = KIND_LIST,
     .commands = CLI_CMD_BENCH, .workload = 1, .field = FIELD(segment_lengths),
     .count_field = FIELD(num_segment_lengths), .min = 0, .max = INT_MAX,
     .metavar = "W1,W2,..", .help = "segment lengths w_i"},
    {.flag = "dilations", .json_key = "dilation_rates", .kind = KIND_LIST,
     .commands = CLI_CMD_BENCH, .workload = 1, .field = FIELD(dilation_rates),
     .count_field = FIELD(num_dilation_rates), .min = 0, .max = INT_MAX,
     .metavar = "R1,R2,..", .help = "dilation rates r_i, one per segment length"},
    {.flag = "mode", .json_key = "mode", .kind = KIND_CHOICE, .commands = CLI_CMD_BENCH,
     .workload = 1, .field = FIELD(mode), .choices = kModeChoices,
     .metavar = "longnet|head-group",
     .help = "every head uses every pattern, or head group i uses pattern i"},
    {.flag = "offset", .json_key = "offset", .kind = KIND_CHOICE, .commands = CLI_CMD_BENCH,
     .workload = 1, .field = FIELD(offset_policy), .choices = kOffsetChoices,
     .metavar = "default|head|group|block",
     .help = "offset policy inside segments (default: head for longnet, group for head-group)"},
    {.flag = "causal", .json_key = "causal", .kind = KIND_SWITCH, .commands = CLI_CMD_BENCH,
     .workload = 1, .field = FIELD(causal), .switch_value = 1,
     .help = "causal masking: query p sees keys t <= p only"},
    {.flag = "scale", .json_key = "scale", .kind = KIND_DOUBLE, .commands = CLI_CMD_BENCH,
     .workload = 1, .field = FIELD(softmax_scale), .metavar = "X",
     .help = "softmax scale", .default_text = "0 = 1/sqrt(d)"},
    {.flag = "backend", .json_key = "backend", .kind = KIND_CHOICE, .commands = DEMO_AND_BENCH,
     .field = FIELD(backend), .choices = kBackendChoices, .metavar = "auto|cpu|cuda",
     .help = "where to run: auto = the GPU when one is there and the CUDA passes serve\n"
             "the configuration, else the CPU"},
    {.flag = "dtype", .json_key = "dtype", .kind = KIND_CHOICE, .commands = CLI_CMD_BENCH,
     .workload = 1, .field = FIELD(dtype), .choices = kDtypeChoices, .metavar = "bf16|f16",
     .help = "tensor type of the CUDA passes (fp32 accumulation); the CPU computes in f32"},
    {.flag = "warmup", .json_key = "warmup", .kind = KIND_INT, .commands = CLI_CMD_BENCH,
     .workload = 1, .field = FIELD(warmup), .min = 0, .max = INT_MAX, .metavar = "K",
     .help = "untimed iterations before timing"},
    {.flag = "repeats", .json_key = "repeats", .kind = KIND_INT, .commands = CLI_CMD_BENCH,
     .workload = 1, .field = FIELD(repeats), .min = 1, .max = INT_MAX, .metavar = "R",
     .help = "timed iterations"},
    {.flag = "backward", .json_key = "backward", .kind = KIND_SWITCH,
     .commands = CLI_CMD_BENCH, .workload = 1, .field = FIELD(backward), .switch_value = 1,
     .help = "also time the backward pass (dout random)"},
    {.flag = "pass", .kind = KIND_CHOICE, .commands = CLI_CMD_BENCH, .workload = 1,
     .field = FIELD(backward), .choices = kPassChoices, .metavar = "fwd|fwdbwd",
     .help = "the passes to time: fwdbwd is --backward"},
    {.flag = "threads", .json_key = "threads", .kind = KIND_INT, .commands = DEMO_AND_BENCH,
     .field = FIELD(threads), .min = 1, .max = INT_MAX, .metavar = "T",
     .help = "OpenMP threads", .default_text = "OMP_NUM_THREADS, else all cores"},
    {.flag = "seed", .json_key = "seed", .kind = KIND_INT64, .commands = CLI_CMD_BENCH,
     .workload = 1, .field = FIELD(seed), .min = 0, .max = INT64_MAX, .metavar = "S",
     .help = "seed of the random inputs"},
    {.flag = "config", .kind = KIND_PATH, .commands = CLI_CMD_BENCH,
     .field = FIELD(config_path), .metavar = "FILE.json",
     .help = "read options from a JSON object whose keys are the flag names with _ for -\n"
             "(segment_lengths, dilation_rates for --segments, --dilations); flags override it"},
    {.flag = "json", .kind = KIND_SWITCH, .commands = CLI_CMD_BENCH, .field = FIELD(output),
     .switch_value = CLI_OUTPUT_JSON, .help = "print one JSON object to stdout"},
    {.flag = "csv", .kind = KIND_SWITCH, .commands = CLI_CMD_BENCH, .field = FIELD(output),
     .switch_value = CLI_OUTPUT_CSV, .help = "print a CSV header line and one row to stdout"},
    {.flag = "ceiling", .kind = KIND_SWITCH, .commands = CLI_CMD_BENCH,
     .field = FIELD(ceiling), .switch_value = 1,
     .help = "only measure the peak the bench compares with and print it: on the GPU\n"
             "cuBLAS's dense bf16 GEMM (8192^3), on the CPU its fp32 FMA throughput (~1.5 s)"},
    {.flag = "help", .kind = KIND_HELP, .commands = DEMO_AND_BENCH, .field = FIELD(help),
     .help = "print this help"},
};

#define NUM_OPTIONS ((int)(sizeof kOptions / sizeof kOptions[0]))
_Static_assert(sizeof kOptions / sizeof kOptions[0] <= 64, "set_mask has 64 bits");

static const int kDefaultSegments[] = {2048, 4096, 8192, 16384, 32768};
static const int kDefaultDilations[] = {1, 2, 4, 8, 16};

static const char* command_name(cli_command command) {
  return command == CLI_CMD_DEMO ? "demo" : "bench";
}

int cli_usage_error(const char* command, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "da %s: ", command);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return CLI_EXIT_USAGE;
}

void cli_options_default(cli_command command, cli_options* options) {
  (void)command;
  memset(options, 0, sizeof *options);
  options->seqlen = 8192;
  options->batch = 1;
  options->heads = 12;
  options->kv_heads = 0; /* = heads, so --heads alone stays valid */
  options->head_dim = 64;
  options->num_segment_lengths = (int)(sizeof kDefaultSegments / sizeof kDefaultSegments[0]);
  memcpy(options->segment_lengths, kDefaultSegments, sizeof kDefaultSegments);
  options->num_dilation_rates = (int)(sizeof kDefaultDilations / sizeof kDefaultDilations[0]);
  memcpy(options->dilation_rates, kDefaultDilations, sizeof kDefaultDilations);
  options->mode = DA_MODE_LONGNET;
  options->offset_policy = DA_OFFSET_DEFAULT;
  options->backend = CLI_BACKEND_AUTO;
  options->dtype = DA_DTYPE_BF16;
  options->warmup = 1;
  options->repeats = 5;
  options->seed = 1;
  options->output = CLI_OUTPUT_TABLE;
}

static void* field_of(cli_options* options, size_t offset) { return (char*)options + offset; }

static const char* choice_name(const option_choice* choices, int value) {
  for (const option_choice* c = choices; c->name != NULL; ++c)
    if (c->value == value) return c->name;
  return "unknown";
}

const char* cli_mode_name(int mode) { return choice_name(kModeChoices, mode); }
const char* cli_offset_name(int offset_policy) {
  return choice_name(kOffsetChoices, offset_policy);
}
const char* cli_backend_name(int backend) { return choice_name(kBackendChoices, backend); }

/* Where a value came from, for messages: "--n" or "cfg.json: key \"n\"". */
typedef struct {
  const char* command;
  char where[320];
} value_source;

/* Range check and store of one integer; list elements go through it too. */
static int store_integer(const value_source* src, const option_spec* spec, int64_t value,
                         cli_options* options, int list_index) {
  char element[48] = "";
  if (list_index >= 0) snprintf(element, sizeof element, " element %d", list_index + 1);
  if (value < spec->min) {
    if (value < 0)
      return cli_usage_error(src->command, "%s%s: %lld is negative", src->where, element,
                             (long long)value);
    return cli_usage_error(src->command, "%s%s: must be >= %lld, got %lld", src->where, element,
                           (long long)spec->min, (long long)value);
  }
  if (value > spec->max)
    return cli_usage_error(src->command, "%s%s: %lld is too large (at most %lld)", src->where,
                           element, (long long)value, (long long)spec->max);
  void* field = field_of(options, spec->field);
  switch (spec->kind) {
    case KIND_INT: *(int*)field = (int)value; break;
    case KIND_INT64: *(int64_t*)field = value; break;
    case KIND_LIST: ((int*)field)[list_index] = (int)value; break;
    default: break;
  }
  return CLI_EXIT_OK;
}

static int store_double(const value_source* src, const option_spec* spec, double value,
                        cli_options* options) {
  if (!isfinite(value))
    return cli_usage_error(src->command, "%s: %g is not a finite number", src->where, value);
  if (value < 0)
    return cli_usage_error(src->command, "%s: %g is negative", src->where, value);
  *(double*)field_of(options, spec->field) = value;
  return CLI_EXIT_OK;
}

static int store_choice(const value_source* src, const option_spec* spec, const char* name,
                        cli_options* options) {
  for (const option_choice* c = spec->choices; c->name != NULL; ++c) {
    if (strcmp(c->name, name) == 0) {
      *(int*)field_of(options, spec->field) = c->value;
      return CLI_EXIT_OK;
    }
  }
  return cli_usage_error(src->command, "%s: '%s' is not one of %s", src->where, name,
                         spec->metavar);
}

static int store_list_count(const value_source* src, const option_spec* spec, int count,
                            cli_options* options) {
  if (count == 0) return cli_usage_error(src->command, "%s: the list is empty", src->where);
  *(int*)field_of(options, spec->count_field) = count;
  return CLI_EXIT_OK;
}

/* Whole-string integer: no leading blanks, no trailing characters. 1 ok, 0 not
 * an integer, -1 out of range of int64. */
static int parse_int64_text(const char* text, size_t length, int64_t* value) {
  char buffer[64];
  if (length == 0 || length >= sizeof buffer || isspace((unsigned char)text[0])) return 0;
  memcpy(buffer, text, length);
  buffer[length] = '\0';
  char* end = NULL;
  errno = 0;
  long long parsed = strtoll(buffer, &end, 10);
  if (end == buffer || *end != '\0') return 0;
  if (errno == ERANGE) return -1;
  *value = (int64_t)parsed;
  return 1;
}

static int apply_integer_text(const value_source* src, const option_spec* spec, const char* text,
                              size_t length, cli_options* options, int list_index) {
  int64_t value = 0;
  char element[48] = "";
  if (list_index >= 0) snprintf(element, sizeof element, " element %d", list_index + 1);
  int parsed = parse_int64_text(text, length, &value);
  if (parsed == 0)
    return cli_usage_error(src->command, "%s%s: '%.*s' is not an integer", src->where, element,
                           (int)length, text);
  if (parsed < 0)
    return cli_usage_error(src->command, "%s%s: '%.*s' is out of range", src->where, element,
                           (int)length, text);
  return store_integer(src, spec, value, options, list_index);
}

/* A command-line value. */
static int apply_text(const value_source* src, const option_spec* spec, const char* text,
                      cli_options* options) {
  switch (spec->kind) {
    case KIND_INT:
    case KIND_INT64: return apply_integer_text(src, spec, text, strlen(text), options, -1);
    case KIND_DOUBLE: {
      char* end = NULL;
      errno = 0;
      double value = strtod(text, &end);
      if (text[0] == '\0' || isspace((unsigned char)text[0]) || end == text || *end != '\0')
        return cli_usage_error(src->command, "%s: '%s' is not a number", src->where, text);
      if (errno == ERANGE && fabs(value) > 1.0)
        return cli_usage_error(src->command, "%s: '%s' is out of range", src->where, text);
      return store_double(src, spec, value, options);
    }
    case KIND_LIST: {
      if (text[0] == '\0') return store_list_count(src, spec, 0, options);
      int count = 0;
      const char* start = text;
      for (;;) {
        const char* comma = strchr(start, ',');
        size_t length = comma ? (size_t)(comma - start) : strlen(start);
        if (length == 0)
          return cli_usage_error(src->command, "%s: empty element %d in '%s'", src->where,
                                 count + 1, text);
        if (count == DA_MAX_PATTERNS)
          return cli_usage_error(src->command, "%s: at most %d values (DA_MAX_PATTERNS)",
                                 src->where, DA_MAX_PATTERNS);
        int rc = apply_integer_text(src, spec, start, length, options, count);
        if (rc != CLI_EXIT_OK) return rc;
        ++count;
        if (comma == NULL) break;
        start = comma + 1;
      }
      return store_list_count(src, spec, count, options);
    }
    case KIND_CHOICE: return store_choice(src, spec, text, options);
    case KIND_PATH:
      if (text[0] == '\0') return cli_usage_error(src->command, "%s: empty path", src->where);
      *(const char**)field_of(options, spec->field) = text;
      return CLI_EXIT_OK;
    case KIND_SWITCH:
    case KIND_HELP: break;
  }
  return CLI_EXIT_OK;
}

/* Integer-valued JSON number: exact and within int64. 1 ok, 0 not. */
static int json_integer(const cJSON* item, int64_t* value) {
  if (!cJSON_IsNumber(item)) return 0;
  double d = item->valuedouble;
  if (!isfinite(d) || d != floor(d) || d < -9223372036854775808.0 ||
      d >= 9223372036854775808.0)
    return 0;
  *value = (int64_t)d;
  return 1;
}

static const char* json_type_name(const cJSON* item) {
  if (cJSON_IsNumber(item)) return "a non-integer number";
  if (cJSON_IsString(item)) return "a string";
  if (cJSON_IsBool(item)) return "a boolean";
  if (cJSON_IsNull(item)) return "null";
  if (cJSON_IsArray(item)) return "an array";
  if (cJSON_IsObject(item)) return "an object";
  return "something else";
}

/* A --config value. */
static int apply_json(const value_source* src, const option_spec* spec, const cJSON* item,
                      cli_options* options) {
  int64_t value = 0;
  switch (spec->kind) {
    case KIND_INT:
    case KIND_INT64:
      if (!json_integer(item, &value))
        return cli_usage_error(src->command, "%s: expected an integer, got %s", src->where,
                               json_type_name(item));
      return store_integer(src, spec, value, options, -1);
    case KIND_DOUBLE:
      if (!cJSON_IsNumber(item))
        return cli_usage_error(src->command, "%s: expected a number, got %s", src->where,
                               json_type_name(item));
      return store_double(src, spec, item->valuedouble, options);
    case KIND_LIST: {
      if (!cJSON_IsArray(item))
        return cli_usage_error(src->command, "%s: expected an array of integers, got %s",
                               src->where, json_type_name(item));
      int count = 0;
      for (const cJSON* element = item->child; element != NULL; element = element->next) {
        if (count == DA_MAX_PATTERNS)
          return cli_usage_error(src->command, "%s: at most %d values (DA_MAX_PATTERNS)",
                                 src->where, DA_MAX_PATTERNS);
        if (!json_integer(element, &value))
          return cli_usage_error(src->command, "%s element %d: expected an integer, got %s",
                                 src->where, count + 1, json_type_name(element));
        int rc = store_integer(src, spec, value, options, count);
        if (rc != CLI_EXIT_OK) return rc;
        ++count;
      }
      return store_list_count(src, spec, count, options);
    }
    case KIND_CHOICE:
      if (!cJSON_IsString(item))
        return cli_usage_error(src->command, "%s: expected a string (%s), got %s", src->where,
                               spec->metavar, json_type_name(item));
      return store_choice(src, spec, item->valuestring, options);
    case KIND_SWITCH:
      if (!cJSON_IsBool(item))
        return cli_usage_error(src->command, "%s: expected true or false, got %s", src->where,
                               json_type_name(item));
      *(int*)field_of(options, spec->field) = cJSON_IsTrue(item) ? spec->switch_value : 0;
      return CLI_EXIT_OK;
    case KIND_PATH:
    case KIND_HELP: break;
  }
  return CLI_EXIT_OK;
}

static int find_flag(const char* name, size_t length) {
  for (int i = 0; i < NUM_OPTIONS; ++i)
    if (strlen(kOptions[i].flag) == length && strncmp(kOptions[i].flag, name, length) == 0)
      return i;
  return -1;
}

static int find_json_key(cli_command command, const char* key) {
  for (int i = 0; i < NUM_OPTIONS; ++i)
    if (kOptions[i].json_key != NULL && (kOptions[i].commands & command) &&
        strcmp(kOptions[i].json_key, key) == 0)
      return i;
  return -1;
}

static int parse_argv(cli_command command, int argc, char** argv, cli_options* options) {
  const char* cmd = command_name(command);
  for (int i = 0; i < argc; ++i) {
    const char* arg = argv[i];
    if (strcmp(arg, "-h") == 0) {
      options->help = 1;
      return CLI_EXIT_OK;
    }
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
      return cli_usage_error(cmd, "unexpected argument '%s' (see da %s --help)", arg, cmd);
    const char* name = arg + 2;
    const char* equals = strchr(name, '=');
    size_t length = equals ? (size_t)(equals - name) : strlen(name);
    int index = find_flag(name, length);
    if (index < 0 || !(kOptions[index].commands & command))
      return cli_usage_error(cmd, "unknown flag --%.*s (see da %s --help)", (int)length, name,
                             cmd);
    const option_spec* spec = &kOptions[index];
    value_source src = {.command = cmd};
    snprintf(src.where, sizeof src.where, "--%s", spec->flag);
    if (spec->kind == KIND_HELP) {
      options->help = 1;
      return CLI_EXIT_OK;
    }
    if (spec->kind == KIND_SWITCH) {
      if (equals) return cli_usage_error(cmd, "--%s takes no value", spec->flag);
      if (spec->field == FIELD(output) && options->output != CLI_OUTPUT_TABLE &&
          options->output != spec->switch_value)
        return cli_usage_error(cmd, "--json and --csv exclude each other");
      *(int*)field_of(options, spec->field) = spec->switch_value;
    } else {
      const char* value = equals ? equals + 1 : (i + 1 < argc ? argv[++i] : NULL);
      if (value == NULL) return cli_usage_error(cmd, "--%s: missing value", spec->flag);
      int rc = apply_text(&src, spec, value, options);
      if (rc != CLI_EXIT_OK) return rc;
    }
    options->set_mask |= 1ull << index;
  }
  return CLI_EXIT_OK;
}

/* Line and column (from 1) of offset in text, for JSON syntax errors. */
static void line_column(const char* text, size_t offset, int* line, int* column) {
  *line = 1;
  *column = 1;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++*line;
      *column = 1;
    } else {
      ++*column;
    }
  }
}

static int read_file(const char* cmd, const char* path, char** text, size_t* length) {
  FILE* file = fopen(path, "rb");
  if (file == NULL) return cli_usage_error(cmd, "--config %s: %s", path, strerror(errno));
  size_t capacity = 4096, size = 0;
  char* buffer = malloc(capacity);
  int rc = CLI_EXIT_OK;
  while (buffer != NULL) {
    size += fread(buffer + size, 1, capacity - 1 - size, file);
    if (size < capacity - 1) break;
    char* grown = realloc(buffer, capacity * 2);
    if (grown == NULL) {
      free(buffer);
      buffer = NULL;
      break;
    }
    buffer = grown;
    capacity *= 2;
  }
  if (buffer == NULL) {
    rc = cli_usage_error(cmd, "--config %s: out of memory", path);
  } else if (ferror(file)) {
    rc = cli_usage_error(cmd, "--config %s: read error: %s", path, strerror(errno));
    free(buffer);
  } else {
    buffer[size] = '\0';
    *text = buffer;
    *length = size;
  }
  fclose(file);
  return rc;
}

static int load_config(cli_command command, const char* path, cli_options* options) {
  const char* cmd = command_name(command);
  char* text = NULL;
  size_t length = 0;
  int rc = read_file(cmd, path, &text, &length);
  if (rc != CLI_EXIT_OK) return rc;
  /* length + 1: with require_null_terminated, cJSON wants to see the NUL, which
   * rejects trailing garbage after the object. */
  cJSON* root = cJSON_ParseWithLengthOpts(text, length + 1, NULL, 1);
  if (root == NULL) {
    const char* at = cJSON_GetErrorPtr();
    size_t offset = (at != NULL && at >= text && at <= text + length) ? (size_t)(at - text)
                                                                       : length;
    int line = 0, column = 0;
    line_column(text, offset, &line, &column);
    /* Context: up to 16 characters before the position and 8 after, on its line. */
    size_t from = offset, to = offset;
    while (from > 0 && offset - from < 16 && text[from - 1] != '\n') --from;
    while (to < length && to - offset < 8 && text[to] != '\n') ++to;
    if (to == from)
      rc = cli_usage_error(cmd, "%s:%d:%d: malformed JSON: unexpected end of %s", path, line,
                           column, offset >= length ? "file" : "line");
    else
      rc = cli_usage_error(cmd, "%s:%d:%d: malformed JSON near '%.*s'", path, line, column,
                           (int)(to - from), text + from);
  } else if (!cJSON_IsObject(root)) {
    rc = cli_usage_error(cmd, "%s: expected a JSON object {\"key\": value, ...}", path);
  } else {
    for (const cJSON* item = root->child; item != NULL && rc == CLI_EXIT_OK;
         item = item->next) {
      int index = find_json_key(command, item->string);
      if (index < 0) {
        rc = cli_usage_error(cmd, "%s: unknown key \"%s\" (see da %s --help)", path,
                             item->string, cmd);
        break;
      }
      value_source src = {.command = cmd};
      snprintf(src.where, sizeof src.where, "%s: key \"%s\"", path, item->string);
      rc = apply_json(&src, &kOptions[index], item, options);
      if (rc == CLI_EXIT_OK) options->set_mask |= 1ull << index;
    }
  }
  cJSON_Delete(root);
  free(text);
  return rc;
}

int cli_options_parse(cli_command command, int argc, char** argv, cli_options* options) {
  /* Pass 1 checks the command line on its own (so its errors come first) and
   * finds --config; pass 2 applies defaults, the file, then the command line. */
  cli_options scratch;
  cli_options_default(command, &scratch);
  int rc = parse_argv(command, argc, argv, &scratch);
  if (rc != CLI_EXIT_OK) return rc;
  cli_options_default(command, options);
  if (scratch.help) {
    options->help = 1;
    return CLI_EXIT_OK;
  }
  if (scratch.config_path != NULL) {
    rc = load_config(command, scratch.config_path, options);
    if (rc != CLI_EXIT_OK) return rc;
  }
  return parse_argv(command, argc, argv, options);
}

int cli_options_any_workload(const cli_options* options) {
  for (int i = 0; i < NUM_OPTIONS; ++i)
    if (kOptions[i].workload && (options->set_mask & (1ull << i))) return 1;
  return 0;
}

static void format_default(const option_spec* spec, const cli_options* defaults, char* text,
                           size_t size) {
  const void* field = (const char*)defaults + spec->field;
  text[0] = '\0';
  if (spec->default_text != NULL) {
    snprintf(text, size, "%s", spec->default_text);
    return;
  }
  switch (spec->kind) {
    case KIND_INT: snprintf(text, size, "%d", *(const int*)field); break;
    case KIND_INT64: snprintf(text, size, "%lld", (long long)*(const int64_t*)field); break;
    case KIND_DOUBLE: snprintf(text, size, "%g", *(const double*)field); break;
    case KIND_CHOICE: snprintf(text, size, "%s", choice_name(spec->choices, *(const int*)field));
      break;
    case KIND_LIST: {
      int count = *(const int*)((const char*)defaults + spec->count_field);
      size_t used = 0;
      for (int i = 0; i < count && used < size; ++i)
        used += (size_t)snprintf(text + used, size - used, "%s%d", i ? "," : "",
                                 ((const int*)field)[i]);
      break;
    }
    default: break;
  }
}

void cli_options_print_flags(cli_command command, FILE* out) {
  cli_options defaults;
  cli_options_default(command, &defaults);
  for (int i = 0; i < NUM_OPTIONS; ++i) {
    const option_spec* spec = &kOptions[i];
    if (!(spec->commands & command)) continue;
    char head[64];
    snprintf(head, sizeof head, "--%s%s%s", spec->flag, spec->metavar ? " " : "",
             spec->metavar ? spec->metavar : "");
    char value[96];
    format_default(spec, &defaults, value, sizeof value);
    fprintf(out, "  %-34s ", head);
    /* Continuation lines of a multi-line help are indented under the first. */
    for (const char* c = spec->help; *c; ++c) {
      fputc(*c, out);
      if (*c == '\n') fprintf(out, "  %-34s ", "");
    }
    if (value[0] != '\0') fprintf(out, " [%s]", value);
    fputc('\n', out);
  }
}

da_attention_params cli_options_params(const cli_options* options) {
  da_attention_params params = da_attention_params_default();
  params.segment_lengths = options->segment_lengths;
  params.num_segment_lengths = options->num_segment_lengths;
  params.dilation_rates = options->dilation_rates;
  params.num_dilation_rates = options->num_dilation_rates;
  params.mode = (da_attention_mode)options->mode;
  params.offset_policy = (da_offset_policy)options->offset_policy;
  params.causal = options->causal;
  params.softmax_scale = (float)options->softmax_scale;
  params.num_heads = options->heads;
  params.num_kv_heads = options->kv_heads;
  params.head_dim = options->head_dim;
  return params;
}

da_attention_batch cli_options_batch(const cli_options* options) {
  da_attention_batch batch = {.batch = options->batch, .seqlen = options->seqlen,
                              .cu_seqlens = NULL};
  return batch;
}
