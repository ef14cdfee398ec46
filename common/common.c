#include <stdarg.h>
#include <stdio.h>

#include "common/da_common.h"
#include "common/error.h"

/* Long enough for any sentence the library writes; longer ones are truncated. */
#define DA_ERROR_CAPACITY 512

static _Thread_local char tls_last_error[DA_ERROR_CAPACITY];

const char* da_status_string(da_status status) {
  switch (status) {
    case DA_STATUS_SUCCESS: return "DA_STATUS_SUCCESS";
    case DA_STATUS_INVALID_ARGUMENT: return "DA_STATUS_INVALID_ARGUMENT";
    case DA_STATUS_NOT_SUPPORTED: return "DA_STATUS_NOT_SUPPORTED";
    case DA_STATUS_OUT_OF_MEMORY: return "DA_STATUS_OUT_OF_MEMORY";
    case DA_STATUS_CUDA_ERROR: return "DA_STATUS_CUDA_ERROR";
    case DA_STATUS_NO_DEVICE: return "DA_STATUS_NO_DEVICE";
    case DA_STATUS_IO_ERROR: return "DA_STATUS_IO_ERROR";
    case DA_STATUS_PARSE_ERROR: return "DA_STATUS_PARSE_ERROR";
    case DA_STATUS_INTERNAL_ERROR: return "DA_STATUS_INTERNAL_ERROR";
    case DA_STATUS_COMM_ERROR: return "DA_STATUS_COMM_ERROR";
  }
  return "DA_STATUS_UNKNOWN";
}

const char* da_last_error(void) { return tls_last_error; }

da_status da_error_set(da_status status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tls_last_error, sizeof tls_last_error, fmt, ap);
  va_end(ap);
  return status;
}

void da_error_clear(void) { tls_last_error[0] = '\0'; }

size_t da_dtype_size(da_dtype dtype) {
  switch (dtype) {
    case DA_DTYPE_F32: return 4;
    case DA_DTYPE_F16: return 2;
    case DA_DTYPE_BF16: return 2;
    case DA_DTYPE_F64: return 8;
  }
  return 0;
}

const char* da_dtype_name(da_dtype dtype) {
  switch (dtype) {
    case DA_DTYPE_F32: return "f32";
    case DA_DTYPE_F16: return "f16";
    case DA_DTYPE_BF16: return "bf16";
    case DA_DTYPE_F64: return "f64";
  }
  return "unknown";
}

#define DA_STR2(x) #x
#define DA_STR(x) DA_STR2(x)

const char* da_version_string(void) {
  return DA_STR(DA_VERSION_MAJOR) "." DA_STR(DA_VERSION_MINOR) "." DA_STR(DA_VERSION_PATCH);
}
