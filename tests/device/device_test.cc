// The GPU probe: reports "no GPU" as a status on machines without one (CI), and
// sane properties on machines with one.
#include <string.h>

#include <gtest/gtest.h>

#include "device/da_device.h"

namespace {

TEST(Device, CountIsStatusNotAbort) {
  int count = -1;
  da_status st = da_device_count(&count);
  if (st == DA_STATUS_NO_DEVICE) {
    EXPECT_EQ(count, 0);
    EXPECT_STRNE(da_last_error(), "");
    GTEST_SKIP() << "no GPU here (" << da_last_error() << ")";
  }
  ASSERT_EQ(st, DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_GE(count, 1);
}

TEST(Device, QueryReportsProperties) {
  int count = 0;
  if (da_device_count(&count) != DA_STATUS_SUCCESS) GTEST_SKIP() << "no GPU: " << da_last_error();
  da_device_info info;
  memset(&info, 0xff, sizeof info);
  ASSERT_EQ(da_device_query(0, &info), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(info.device, 0);
  EXPECT_GT(strlen(info.name), 0u);
  EXPECT_GE(info.sm_major, 7);
  EXPECT_GT(info.multiprocessors, 0);
  EXPECT_GT(info.total_memory_bytes, 1u << 30);
  EXPECT_GE(info.runtime_version, 12000);
  printf("device 0: %s, sm_%d%d, %d SMs, %.1f GiB\n", info.name, info.sm_major, info.sm_minor,
         info.multiprocessors, info.total_memory_bytes / 1073741824.0);
}

TEST(Device, BadArguments) {
  EXPECT_EQ(da_device_count(nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "count"), nullptr);
  EXPECT_EQ(da_device_query(0, nullptr), DA_STATUS_INVALID_ARGUMENT);
  da_device_info info;
  da_status st = da_device_query(1 << 20, &info);
  // Without a GPU the probe fails first; with one the ordinal is out of range.
  EXPECT_TRUE(st == DA_STATUS_NO_DEVICE || st == DA_STATUS_INVALID_ARGUMENT);
  EXPECT_STRNE(da_last_error(), "");
  EXPECT_EQ(da_device_query(-1, &info) == DA_STATUS_SUCCESS, false);
}

}  // namespace
