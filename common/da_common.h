/* da_common.h: the status codes, error reporting and element types shared by every
 * component of the dilated attention library. */
#ifndef DA_COMMON_H
#define DA_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DA_VERSION_MAJOR 0
#define DA_VERSION_MINOR 1
#define DA_VERSION_PATCH 0

/* Symbols of the shared library's C ABI. */
#if defined(__GNUC__)
#define DA_API __attribute__((visibility("default")))
#else
#define DA_API
#endif

/* Every fallible call returns one of these. On anything but DA_STATUS_SUCCESS,
 * da_last_error() holds a sentence naming the argument and the rule it broke. */
typedef enum {
  DA_STATUS_SUCCESS = 0,
  DA_STATUS_INVALID_ARGUMENT = 1, /* bad value, shape or pointer from the caller */
  DA_STATUS_NOT_SUPPORTED = 2,    /* valid request this build or device cannot serve */
  DA_STATUS_OUT_OF_MEMORY = 3,    /* host or device allocation failed */
  DA_STATUS_CUDA_ERROR = 4,       /* a CUDA runtime call failed */
  DA_STATUS_NO_DEVICE = 5,        /* no usable GPU (no driver, or no device) */
  DA_STATUS_IO_ERROR = 6,         /* reading or writing a file failed */
  DA_STATUS_PARSE_ERROR = 7,      /* malformed input text (JSON, flags) */
  DA_STATUS_INTERNAL_ERROR = 8,   /* a bug in the library: please report it */
  DA_STATUS_COMM_ERROR = 9        /* a peer failed, disagreed or timed out in a collective */
} da_status;

/* Short constant name of a status, e.g. "DA_STATUS_INVALID_ARGUMENT". Never NULL. */
DA_API const char* da_status_string(da_status status);

/* The sentence describing the last failure on the calling thread ("" if none).
 * Valid until the next library call on this thread. Thread-safe (per thread). */
DA_API const char* da_last_error(void);

/* Element types of tensors crossing the API. */
typedef enum {
  DA_DTYPE_F32 = 0,
  DA_DTYPE_F16 = 1,
  DA_DTYPE_BF16 = 2,
  DA_DTYPE_F64 = 3
} da_dtype;

/* Bytes per element, 0 for an unknown value. */
DA_API size_t da_dtype_size(da_dtype dtype);

/* Lower-case name ("f32", "bf16", ...), "unknown" for an unknown value. */
DA_API const char* da_dtype_name(da_dtype dtype);

/* Host conversions between float32 and the 16-bit types the CUDA passes take
 * (DA_DTYPE_F16, DA_DTYPE_BF16), IEEE round to nearest even (as cuda_fp16.h /
 * cuda_bf16.h do); overflow gives inf, NaN stays NaN. dst and src may not overlap.
 * DA_STATUS_INVALID_ARGUMENT for another dtype or NULL with count > 0. */
DA_API da_status da_convert_from_f32(da_dtype dst_type, const float* src, uint16_t* dst,
                                     size_t count);
DA_API da_status da_convert_to_f32(da_dtype src_type, const uint16_t* src, float* dst,
                                   size_t count);

/* "MAJOR.MINOR.PATCH" of the library actually loaded. */
DA_API const char* da_version_string(void);

#ifdef __cplusplus
}
#endif

#endif /* DA_COMMON_H */
