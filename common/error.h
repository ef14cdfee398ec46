/* error.h: how components record failures for da_last_error(). Library-internal:
 * visible to the library's components, not installed for users. */
#ifndef DA_COMMON_ERROR_H
#define DA_COMMON_ERROR_H

#include "common/da_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Records a printf-style sentence for da_last_error() on this thread and returns
 * `status`, so failures read `return da_error_set(DA_STATUS_..., "...", ...);`. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
da_status da_error_set(da_status status, const char* fmt, ...);

/* Clears this thread's last error (public entry points call it first). */
void da_error_clear(void);

#ifdef __cplusplus
}
#endif

#endif /* DA_COMMON_ERROR_H */
