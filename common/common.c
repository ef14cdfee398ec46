#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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

static uint16_t f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
  x += 0x7fffu + ((x >> 16) & 1u); /* round to nearest even; carries into the exponent */
  return (uint16_t)(x >> 16);
}

static uint16_t f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u;  /* NaN */
  if (ax >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to inf */
  if (ax < 0x38800000u) {                        /* below 2^-14: subnormal or zero */
    float a;
    memcpy(&a, &ax, sizeof a);
    return sign | (uint16_t)lrintf(a * 16777216.0f); /* exact scaling, rint is RNE */
  }
  uint32_t h = (((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13);
  uint32_t rest = ax & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
  return sign | (uint16_t)h;
}

static float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t x;
  if (e == 0) {
    float f = ldexpf((float)m, -24);
    memcpy(&x, &f, sizeof x);
    x |= sign;
  } else if (e == 31) {
    x = sign | 0x7f800000u | (m << 13);
  } else {
    x = sign | ((e + 112u) << 23) | (m << 13);
  }
  float f;
  memcpy(&f, &x, sizeof f);
  return f;
}

static da_status check_convert(da_dtype type, const void* src, const void* dst, size_t count) {
  if (type != DA_DTYPE_F16 && type != DA_DTYPE_BF16)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "dtype=%s: the conversions take f16 or bf16", da_dtype_name(type));
  if (count > 0 && (src == NULL || dst == NULL))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s must not be NULL (count=%zu)",
                        src == NULL ? "src" : "dst", count);
  return DA_STATUS_SUCCESS;
}

da_status da_convert_from_f32(da_dtype dst_type, const float* src, uint16_t* dst, size_t count) {
  da_status st = check_convert(dst_type, src, dst, count);
  if (st != DA_STATUS_SUCCESS) return st;
  for (size_t i = 0; i < count; i++)
    dst[i] = dst_type == DA_DTYPE_BF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
  return DA_STATUS_SUCCESS;
}

da_status da_convert_to_f32(da_dtype src_type, const uint16_t* src, float* dst, size_t count) {
  da_status st = check_convert(src_type, src, dst, count);
  if (st != DA_STATUS_SUCCESS) return st;
  for (size_t i = 0; i < count; i++) {
    if (src_type == DA_DTYPE_BF16) {
      uint32_t x = (uint32_t)src[i] << 16;
      memcpy(&dst[i], &x, sizeof x);
    } else {
      dst[i] = f16_to_f32(src[i]);
    }
  }
  return DA_STATUS_SUCCESS;
}
