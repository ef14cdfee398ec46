/* The config as JSON (Debian's cJSON): one table of keys drives loading and
 * dumping, so both agree. Loading is strict: unknown keys at any level, duplicate
 * keys, wrong types and out-of-range numbers are errors naming the key's path;
 * malformed JSON is an error with its line and column (cJSON reports a byte
 * offset, which is converted). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "dist_config/config_internal.h"

typedef enum {
  KIND_INT,      /* a JSON integer that fits an int                          */
  KIND_INT_LIST, /* an array of 1..DA_MAX_PATTERNS such integers             */
  KIND_DOUBLE,   /* a finite JSON number                                     */
  KIND_BOOL,     /* true / false                                             */
  KIND_ENUM,     /* one of the enum's names                                  */
  KIND_SEED,     /* an integer in [0, 2^53]                                  */
  KIND_OPT_INT   /* an int, or null for "unset"                              */
} field_kind;

typedef struct {
  const char* key;
  field_kind kind;
  size_t offset;        /* of the value in da_config                     */
  size_t count_offset;  /* KIND_INT_LIST: of its element count           */
  da_config_enum names; /* KIND_ENUM                                     */
  int unset;            /* KIND_OPT_INT: the value null stands for       */
} field_spec;

#define AT(member) offsetof(da_config, member)

static const field_spec kAttention[] = {
    {"segment_lengths", KIND_INT_LIST, AT(attention.segment_lengths),
     AT(attention.num_segment_lengths), 0, 0},
    {"dilation_rates", KIND_INT_LIST, AT(attention.dilation_rates),
     AT(attention.num_dilation_rates), 0, 0},
    {"mode", KIND_ENUM, AT(attention.mode), 0, DA_CONFIG_ENUM_MODE, 0},
    {"offset_policy", KIND_ENUM, AT(attention.offset_policy), 0, DA_CONFIG_ENUM_OFFSET, 0},
    {"causal", KIND_BOOL, AT(attention.causal), 0, 0, 0},
    {"softmax_scale", KIND_DOUBLE, AT(attention.softmax_scale), 0, 0, 0},
    {"num_heads", KIND_INT, AT(attention.num_heads), 0, 0, 0},
    {"num_kv_heads", KIND_INT, AT(attention.num_kv_heads), 0, 0, 0},
    {"head_dim", KIND_INT, AT(attention.head_dim), 0, 0, 0},
    {"dropout", KIND_DOUBLE, AT(attention.dropout), 0, 0, 0},
};

static const field_spec kSparse[] = {
    {"pattern_type", KIND_ENUM, AT(sparse.pattern_type), 0, DA_CONFIG_ENUM_PATTERN_TYPE, 0},
    {"block_size", KIND_INT, AT(sparse.block_size), 0, 0, 0},
    {"density", KIND_DOUBLE, AT(sparse.density), 0, 0, 0},
    {"local_density", KIND_DOUBLE, AT(sparse.local_density), 0, 0, 0},
    {"global_density", KIND_DOUBLE, AT(sparse.global_density), 0, 0, 0},
    {"inter_node_density", KIND_DOUBLE, AT(sparse.inter_node_density), 0, 0, 0},
    {"local_window_blocks", KIND_INT, AT(sparse.local_window_blocks), 0, 0, 0},
    {"seed", KIND_SEED, AT(sparse.seed), 0, 0, 0},
    {"gradient_compression_ratio", KIND_DOUBLE, AT(sparse.gradient_compression_ratio), 0, 0, 0},
    {"load_balance_threshold", KIND_DOUBLE, AT(sparse.load_balance_threshold), 0, 0, 0},
    {"adaptive_rate", KIND_DOUBLE, AT(sparse.adaptive_rate), 0, 0, 0},
    {"enable_async_communication", KIND_BOOL, AT(sparse.enable_async_communication), 0, 0, 0},
    {"enable_gradient_compression", KIND_BOOL, AT(sparse.enable_gradient_compression), 0, 0, 0},
    {"enable_load_balancing", KIND_BOOL, AT(sparse.enable_load_balancing), 0, 0, 0},
    {"enable_memory_pool", KIND_BOOL, AT(sparse.enable_memory_pool), 0, 0, 0},
    {"enable_pinned_memory", KIND_BOOL, AT(sparse.enable_pinned_memory), 0, 0, 0},
    {"gradient_bucket_size_mb", KIND_DOUBLE, AT(sparse.gradient_bucket_size_mb), 0, 0, 0},
    {"gradient_bucket_count", KIND_INT, AT(sparse.gradient_bucket_count), 0, 0, 0},
};

static const field_spec kTopology[] = {
    {"world_size", KIND_OPT_INT, AT(topology.world_size), 0, 0, 0},
    {"rank", KIND_OPT_INT, AT(topology.rank), 0, 0, -1},
    {"local_world_size", KIND_OPT_INT, AT(topology.local_world_size), 0, 0, 0},
};

/* The original system's names: same values (its "sparsity" held densities). */
typedef struct {
  const char* alias;
  const char* key;
} alias_spec;

static const alias_spec kSparseAliases[] = {
    {"sparsity_ratio", "density"},
    {"local_sparsity", "local_density"},
    {"global_sparsity", "global_density"},
    {"inter_node_sparsity", "inter_node_density"},
    {"adaptive_sparsity_rate", "adaptive_rate"},
    {"compression_ratio", "gradient_compression_ratio"},
};

typedef struct {
  const char* name;
  const field_spec* fields;
  int num_fields;
  const alias_spec* aliases;
  int num_aliases;
} section_spec;

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const section_spec kSections[] = {
    {"attention", kAttention, COUNT(kAttention), NULL, 0},
    {"sparse", kSparse, COUNT(kSparse), kSparseAliases, COUNT(kSparseAliases)},
    {"topology", kTopology, COUNT(kTopology), NULL, 0},
};

#define MAX_FIELDS 32

/* ------------------------------------------------------------------ loading */

static const char* type_name(const cJSON* item) {
  if (cJSON_IsNumber(item)) return "a number";
  if (cJSON_IsString(item)) return "a string";
  if (cJSON_IsBool(item)) return "a boolean";
  if (cJSON_IsNull(item)) return "null";
  if (cJSON_IsArray(item)) return "an array";
  if (cJSON_IsObject(item)) return "an object";
  return "an invalid value";
}

/* An integer in [lo, hi] (JSON has one number type: 128 and 128.0 both qualify). */
static int as_integer(const cJSON* item, double lo, double hi, double* value) {
  if (!cJSON_IsNumber(item)) return 0;
  double v = item->valuedouble;
  if (!isfinite(v) || v != floor(v) || v < lo || v > hi) return 0;
  *value = v;
  return 1;
}

static da_status wrong(const char* source, const char* section, const char* key,
                       const char* expected, const cJSON* item) {
  char got[80];
  if (cJSON_IsNumber(item))
    snprintf(got, sizeof got, "%.17g", item->valuedouble);
  else if (cJSON_IsString(item))
    snprintf(got, sizeof got, "the string \"%.48s\"", item->valuestring);
  else
    snprintf(got, sizeof got, "%s", type_name(item));
  return da_error_set(DA_STATUS_PARSE_ERROR, "%s: %s.%s: expected %s, got %s", source, section, key,
                      expected, got);
}

static da_status read_field(const char* source, const char* section, const field_spec* f,
                            const cJSON* item, da_config* out) {
  char* at = (char*)out + f->offset;
  double v = 0.0;
  switch (f->kind) {
    case KIND_INT:
      if (!as_integer(item, INT_MIN, INT_MAX, &v))
        return wrong(source, section, f->key, "an integer", item);
      *(int*)at = (int)v;
      return DA_STATUS_SUCCESS;
    case KIND_OPT_INT:
      if (cJSON_IsNull(item)) {
        *(int*)at = f->unset;
        return DA_STATUS_SUCCESS;
      }
      if (!as_integer(item, INT_MIN, INT_MAX, &v))
        return wrong(source, section, f->key, "an integer or null (unset)", item);
      *(int*)at = (int)v;
      return DA_STATUS_SUCCESS;
    case KIND_SEED:
      if (!as_integer(item, 0, (double)DA_CONFIG_MAX_SEED, &v))
        return wrong(source, section, f->key, "an integer in [0, 2^53]", item);
      *(uint64_t*)at = (uint64_t)v;
      return DA_STATUS_SUCCESS;
    case KIND_DOUBLE:
      if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble))
        return wrong(source, section, f->key, "a finite number", item);
      *(double*)at = item->valuedouble;
      return DA_STATUS_SUCCESS;
    case KIND_BOOL:
      if (!cJSON_IsBool(item)) return wrong(source, section, f->key, "true or false", item);
      *(int*)at = cJSON_IsTrue(item) ? 1 : 0;
      return DA_STATUS_SUCCESS;
    case KIND_ENUM: {
      int count = 0;
      const char* const* names = da_config_names(f->names, &count);
      char expected[160] = "one of";
      for (int x = 0; x < count; x++) {
        size_t used = strlen(expected);
        snprintf(expected + used, sizeof expected - used, "%s \"%s\"", x ? "," : "", names[x]);
      }
      if (!cJSON_IsString(item)) return wrong(source, section, f->key, expected, item);
      for (int x = 0; x < count; x++)
        if (strcmp(item->valuestring, names[x]) == 0) {
          *(int*)at = x;
          return DA_STATUS_SUCCESS;
        }
      return da_error_set(DA_STATUS_PARSE_ERROR, "%s: %s.%s: \"%s\" is not %s", source, section,
                          f->key, item->valuestring, expected);
    }
    case KIND_INT_LIST: {
      if (!cJSON_IsArray(item)) return wrong(source, section, f->key, "an array of integers", item);
      int n = 0;
      for (const cJSON* e = item->child; e != NULL; e = e->next, n++) {
        if (n == DA_MAX_PATTERNS)
          return da_error_set(DA_STATUS_PARSE_ERROR, "%s: %s.%s: more than %d values", source,
                              section, f->key, DA_MAX_PATTERNS);
        if (!as_integer(e, INT_MIN, INT_MAX, &v)) {
          char key[64];
          snprintf(key, sizeof key, "%s[%d]", f->key, n);
          return wrong(source, section, key, "an integer", e);
        }
        ((int*)at)[n] = (int)v;
      }
      if (n == 0)
        return da_error_set(DA_STATUS_PARSE_ERROR, "%s: %s.%s: the array is empty", source, section,
                            f->key);
      *(int*)((char*)out + f->count_offset) = n;
      return DA_STATUS_SUCCESS;
    }
  }
  return da_error_set(DA_STATUS_INTERNAL_ERROR, "unknown field kind %d", (int)f->kind);
}

static int find_field(const section_spec* s, const char* key) {
  for (int x = 0; x < s->num_fields; x++)
    if (strcmp(s->fields[x].key, key) == 0) return x;
  return -1;
}

static da_status read_section(const char* source, const section_spec* s, const cJSON* object,
                              const da_config_load_options* options, da_config* out) {
  if (!cJSON_IsObject(object))
    return da_error_set(DA_STATUS_PARSE_ERROR, "%s: %s: expected an object, got %s", source,
                        s->name, type_name(object));
  const char* set_by[MAX_FIELDS] = {0};
  for (const cJSON* item = object->child; item != NULL; item = item->next) {
    const char* key = item->string;
    int index = find_field(s, key);
    const alias_spec* alias = NULL;
    for (int a = 0; index < 0 && a < s->num_aliases; a++)
      if (strcmp(s->aliases[a].alias, key) == 0) {
        alias = &s->aliases[a];
        index = find_field(s, alias->key);
      }
    if (index < 0)
      return da_error_set(DA_STATUS_PARSE_ERROR,
                          "%s: unknown key \"%s.%s\" (see docs/dist_config.md)", source, s->name,
                          key);
    if (set_by[index] != NULL) {
      if (strcmp(set_by[index], key) == 0)
        return da_error_set(DA_STATUS_PARSE_ERROR, "%s: duplicate key \"%s.%s\"", source, s->name,
                            key);
      return da_error_set(DA_STATUS_PARSE_ERROR,
                          "%s: \"%s.%s\" and \"%s.%s\" set the same field: keep only \"%s\"",
                          source, s->name, set_by[index], s->name, key, s->fields[index].key);
    }
    set_by[index] = key;
    if (alias != NULL && options != NULL && options->warning != NULL) {
      static const char kFormat[] =
          "%s: %s.%s is deprecated: use %s.%s (same value: the kept fraction)";
      int n = snprintf(NULL, 0, kFormat, source, s->name, alias->alias, s->name, alias->key);
      char* message = n >= 0 ? malloc((size_t)n + 1) : NULL;
      if (message == NULL)
        return da_error_set(DA_STATUS_OUT_OF_MEMORY, "could not allocate a warning");
      snprintf(message, (size_t)n + 1, kFormat, source, s->name, alias->alias, s->name, alias->key);
      options->warning(options->warning_ctx, message);
      free(message);
    }
    da_status st = read_field(source, s->name, &s->fields[index], item, out);
    if (st) return st;
  }
  return DA_STATUS_SUCCESS;
}

/* Line and column (from 1, in bytes) of offset in text. */
static void line_column(const char* text, size_t offset, int* line, int* column) {
  *line = 1;
  *column = 1;
  for (size_t i = 0; i < offset; i++) {
    if (text[i] == '\n') {
      ++*line;
      *column = 1;
    } else {
      ++*column;
    }
  }
}

static da_status syntax_error(const char* source, const char* text, size_t length, size_t offset) {
  int line = 0, column = 0;
  if (offset > length) offset = length;
  line_column(text, offset, &line, &column);
  if (offset >= length)
    return da_error_set(DA_STATUS_PARSE_ERROR, "%s:%d:%d: malformed JSON: unexpected end of input",
                        source, line, column);
  /* Context: the rest of the line from the position, at most 16 bytes. */
  size_t end = offset;
  while (end < length && end - offset < 16 && text[end] != '\n') end++;
  return da_error_set(DA_STATUS_PARSE_ERROR, "%s:%d:%d: malformed JSON at '%.*s'", source, line,
                      column, (int)(end - offset), text + offset);
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* '{' or '[': the innermost container open at text[pos] (0 if none), skipping
 * strings. Deeper than cJSON's nesting limit never parses, so a fixed stack does. */
static char container_at(const char* text, size_t pos) {
  char stack[CJSON_NESTING_LIMIT + 2];
  size_t depth = 0;
  int in_string = 0;
  for (size_t i = 0; i <= pos; i++) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\' && i < pos)
        i++;
      else if (c == '"')
        in_string = 0;
    } else if (c == '"') {
      in_string = 1;
    } else if (c == '{' || c == '[') {
      if (depth < sizeof stack) stack[depth] = c;
      depth++;
    } else if ((c == '}' || c == ']') && depth > 0) {
      depth--;
    }
  }
  return depth > 0 && depth <= sizeof stack ? stack[depth - 1] : 0;
}

/* cJSON reports a key that does not start with a quote one byte past its start:
 * when the byte before the reported offset is such a key (not blank, not a quote,
 * right after an object's '{' or ','), that byte is where the error is. */
static size_t key_error_offset(const char* text, size_t length, size_t offset) {
  if (offset == 0 || offset > length) return offset;
  const size_t at = offset - 1;
  if (is_space(text[at]) || text[at] == '"') return offset;
  size_t before = at;
  while (before > 0 && is_space(text[before - 1])) before--;
  if (before == 0) return offset;
  const char opener = text[before - 1];
  if (opener == '{' || (opener == ',' && container_at(text, before - 1) == '{')) return at;
  return offset;
}

static pthread_mutex_t parse_lock = PTHREAD_MUTEX_INITIALIZER;

/* text holds length bytes and a NUL after them. */
static da_status load_text(const char* source, const char* text, size_t length,
                           const da_config_load_options* options, da_config* out) {
  const char* nul = memchr(text, '\0', length);
  if (nul != NULL) {
    int line, column;
    line_column(text, (size_t)(nul - text), &line, &column);
    return da_error_set(DA_STATUS_PARSE_ERROR, "%s:%d:%d: malformed JSON: a NUL byte", source, line,
                        column);
  }
  const char* end = NULL;
  /* length + 1 with require_null_terminated: trailing garbage is an error too.
   * cJSON records every failure in a process-wide variable as well: one parse at a
   * time keeps concurrent loads race-free. */
  pthread_mutex_lock(&parse_lock);
  cJSON* root = cJSON_ParseWithLengthOpts(text, length + 1, &end, 1);
  pthread_mutex_unlock(&parse_lock);
  if (root == NULL) {
    size_t offset = (end != NULL && end >= text) ? (size_t)(end - text) : length;
    return syntax_error(source, text, length, key_error_offset(text, length, offset));
  }
  da_config config = da_config_default();
  da_status st = DA_STATUS_SUCCESS;
  if (!cJSON_IsObject(root)) {
    st = da_error_set(DA_STATUS_PARSE_ERROR,
                      "%s: expected a JSON object {\"attention\": {...}, \"sparse\": {...}, "
                      "\"topology\": {...}}, got %s",
                      source, type_name(root));
  }
  int seen[COUNT(kSections)] = {0};
  for (const cJSON* item = st ? NULL : root->child; item != NULL && !st; item = item->next) {
    int which = -1;
    for (int x = 0; x < COUNT(kSections); x++)
      if (strcmp(item->string, kSections[x].name) == 0) which = x;
    if (which < 0) {
      st = da_error_set(DA_STATUS_PARSE_ERROR,
                        "%s: unknown key \"%s\" (the sections are attention, sparse, topology)",
                        source, item->string);
    } else if (seen[which]++) {
      st = da_error_set(DA_STATUS_PARSE_ERROR, "%s: duplicate key \"%s\"", source, item->string);
    } else {
      st = read_section(source, &kSections[which], item, options, &config);
    }
  }
  cJSON_Delete(root);
  if (st) return st;
  st = da_config_validate(&config);
  if (st) {
    char why[512];
    snprintf(why, sizeof why, "%s", da_last_error());
    return da_error_set(st, "%s: %s", source, why);
  }
  *out = config;
  return DA_STATUS_SUCCESS;
}

da_status da_config_load_string(const char* json, const da_config_load_options* options,
                                da_config* config) {
  da_error_clear();
  if (json == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "json must not be NULL");
  if (config == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config must not be NULL");
  return load_text("<string>", json, strlen(json), options, config);
}

da_status da_config_load_file(const char* path, const da_config_load_options* options,
                              da_config* config) {
  da_error_clear();
  if (path == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "path must not be NULL");
  if (config == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config must not be NULL");
  FILE* file = fopen(path, "rb");
  if (file == NULL)
    return da_error_set(DA_STATUS_IO_ERROR, "%s: cannot open: %s", path, strerror(errno));
  size_t capacity = 4096, size = 0;
  char* text = malloc(capacity);
  da_status st = DA_STATUS_SUCCESS;
  while (text != NULL) {
    size += fread(text + size, 1, capacity - 1 - size, file);
    if (size < capacity - 1) break;
    char* grown = capacity > ((size_t)1 << 30) ? NULL : realloc(text, capacity * 2);
    if (grown == NULL) {
      free(text);
      text = NULL;
      break;
    }
    text = grown;
    capacity *= 2;
  }
  if (text == NULL) {
    st = da_error_set(DA_STATUS_OUT_OF_MEMORY, "%s: too large to read (over 1 GiB or no memory)",
                      path);
  } else if (ferror(file)) {
    st = da_error_set(DA_STATUS_IO_ERROR, "%s: read error: %s", path, strerror(errno));
  } else {
    text[size] = '\0';
    st = load_text(path, text, size, options, config);
  }
  free(text);
  fclose(file);
  return st;
}

/* ------------------------------------------------------------------ dumping */

/* A growing string; `failed` sticks after an allocation failure. */
typedef struct {
  char* text;
  size_t length, capacity;
  int failed;
} text_buffer;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
append(text_buffer* b, const char* fmt, ...) {
  if (b->failed) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->text + b->length, b->capacity - b->length, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->failed = 1;
      return;
    }
    if ((size_t)n < b->capacity - b->length) {
      b->length += (size_t)n;
      return;
    }
    size_t grown = (b->capacity + (size_t)n + 1) * 2;
    char* text = realloc(b->text, grown);
    if (text == NULL) {
      b->failed = 1;
      return;
    }
    b->text = text;
    b->capacity = grown;
  }
}

/* The shortest of %.15g, %.16g, %.17g that reads back as exactly v, with a '.'
 * whatever the locale's decimal point (cJSON reads it locale-aware). */
static void append_double(text_buffer* b, double v) {
  char digits[40];
  for (int precision = 15; precision <= 17; precision++) {
    snprintf(digits, sizeof digits, "%.*g", precision, v);
    if (strtod(digits, NULL) == v) break;
  }
  const char point = localeconv()->decimal_point[0];
  for (char* c = digits; *c != '\0'; c++)
    if (*c == point) *c = '.';
  append(b, "%s", digits);
}

static void append_field(text_buffer* b, const field_spec* f, const da_config* config) {
  const char* at = (const char*)config + f->offset;
  switch (f->kind) {
    case KIND_INT:
      append(b, "%d", *(const int*)at);
      return;
    case KIND_OPT_INT:
      if (*(const int*)at == f->unset)
        append(b, "null");
      else
        append(b, "%d", *(const int*)at);
      return;
    case KIND_SEED:
      append(b, "%llu", (unsigned long long)*(const uint64_t*)at);
      return;
    case KIND_DOUBLE:
      append_double(b, *(const double*)at);
      return;
    case KIND_BOOL:
      append(b, "%s", *(const int*)at ? "true" : "false");
      return;
    case KIND_ENUM: {
      int count = 0;
      const char* const* names = da_config_names(f->names, &count);
      append(b, "\"%s\"", names[*(const int*)at]);
      return;
    }
    case KIND_INT_LIST: {
      const int n = *(const int*)((const char*)config + f->count_offset);
      append(b, "[");
      for (int x = 0; x < n; x++) append(b, "%s%d", x ? ", " : "", ((const int*)at)[x]);
      append(b, "]");
      return;
    }
  }
}

da_status da_config_to_json(const da_config* config, char** json) {
  da_error_clear();
  if (json == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "json must not be NULL");
  *json = NULL;
  da_status st = da_config_validate(config);
  if (st) return st;
  text_buffer b = {NULL, 0, 0, 0};
  append(&b, "{\n");
  for (int s = 0; s < COUNT(kSections); s++) {
    append(&b, "  \"%s\": {\n", kSections[s].name);
    for (int x = 0; x < kSections[s].num_fields; x++) {
      append(&b, "    \"%s\": ", kSections[s].fields[x].key);
      append_field(&b, &kSections[s].fields[x], config);
      append(&b, "%s\n", x + 1 < kSections[s].num_fields ? "," : "");
    }
    append(&b, "  }%s\n", s + 1 < COUNT(kSections) ? "," : "");
  }
  append(&b, "}");
  if (b.failed) {
    free(b.text);
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "could not allocate the JSON of a config");
  }
  *json = b.text;
  return DA_STATUS_SUCCESS;
}

void da_config_free_json(char* json) { free(json); }

/* -------------------------------------------------------------- da config check */

static void print_warning(void* ctx, const char* message) {
  fprintf((FILE*)ctx, "warning: %s\n", message);
}

da_status da_config_check_file(const char* path, FILE* out, FILE* warnings) {
  da_error_clear();
  if (out == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "out must not be NULL");
  da_config_load_options options = {warnings != NULL ? print_warning : NULL, warnings};
  da_config config;
  da_status st = da_config_load_file(path, &options, &config);
  if (!st) st = da_config_resolve_topology(&config, NULL, NULL);
  char* json = NULL;
  if (!st) st = da_config_to_json(&config, &json);
  if (st) return st;
  const int failed = fputs(json, out) < 0 || fputc('\n', out) == EOF || fflush(out) != 0;
  da_config_free_json(json);
  if (failed)
    return da_error_set(DA_STATUS_IO_ERROR, "writing the config failed: %s", strerror(errno));
  return DA_STATUS_SUCCESS;
}
