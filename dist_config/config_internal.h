/* config_internal.h: what the two halves of dist_config (validation, JSON) share.
 * Internal to the component. */
#ifndef DA_DIST_CONFIG_INTERNAL_H
#define DA_DIST_CONFIG_INTERNAL_H

#include "dist_config/da_config.h"

typedef enum {
  DA_CONFIG_ENUM_MODE = 0,
  DA_CONFIG_ENUM_OFFSET = 1,
  DA_CONFIG_ENUM_PATTERN_TYPE = 2
} da_config_enum;

/* The JSON spellings of an enum's values, indexed by value; *count of them. */
const char* const* da_config_names(da_config_enum which, int* count);

#endif /* DA_DIST_CONFIG_INTERNAL_H */
