#include <string.h>

#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "common/da_common.h"
#include "common/error.h"

namespace {

TEST(Common, StatusStringsAreDistinctAndNamed) {
  for (int a = DA_STATUS_SUCCESS; a <= DA_STATUS_COMM_ERROR; a++) {
    const char* sa = da_status_string((da_status)a);
    EXPECT_EQ(strncmp(sa, "DA_STATUS_", 10), 0) << sa;
    EXPECT_STRNE(sa, "DA_STATUS_UNKNOWN");
    for (int b = a + 1; b <= DA_STATUS_COMM_ERROR; b++)
      EXPECT_STRNE(sa, da_status_string((da_status)b));
  }
  EXPECT_STREQ(da_status_string((da_status)999), "DA_STATUS_UNKNOWN");
}

TEST(Common, LastErrorIsPerThread) {
  EXPECT_EQ(da_error_set(DA_STATUS_INVALID_ARGUMENT, "x=%d is bad", 7),
            DA_STATUS_INVALID_ARGUMENT);
  EXPECT_STREQ(da_last_error(), "x=7 is bad");
  std::string other;
  std::thread t([&] {
    other = da_last_error();
    da_error_set(DA_STATUS_IO_ERROR, "thread");
  });
  t.join();
  EXPECT_EQ(other, "");
  EXPECT_STREQ(da_last_error(), "x=7 is bad");
  da_error_clear();
  EXPECT_STREQ(da_last_error(), "");
}

TEST(Common, LongMessagesAreTruncatedNotOverflowed) {
  std::string big(5000, 'a');
  da_error_set(DA_STATUS_INTERNAL_ERROR, "%s", big.c_str());
  EXPECT_GT(strlen(da_last_error()), 100u);
  EXPECT_LT(strlen(da_last_error()), 5000u);
}

TEST(Common, Dtypes) {
  EXPECT_EQ(da_dtype_size(DA_DTYPE_F32), 4u);
  EXPECT_EQ(da_dtype_size(DA_DTYPE_BF16), 2u);
  EXPECT_EQ(da_dtype_size(DA_DTYPE_F16), 2u);
  EXPECT_EQ(da_dtype_size(DA_DTYPE_F64), 8u);
  EXPECT_EQ(da_dtype_size((da_dtype)42), 0u);
  EXPECT_STREQ(da_dtype_name(DA_DTYPE_BF16), "bf16");
  EXPECT_STREQ(da_dtype_name((da_dtype)42), "unknown");
  EXPECT_STREQ(da_version_string(), "0.1.0");
}

}  // namespace
