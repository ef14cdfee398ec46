#include <string.h>

#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

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

// Every 16-bit pattern decodes and encodes back to itself (NaNs stay NaN).
TEST(Common, SixteenBitRoundTripsEveryPattern) {
  for (da_dtype type : {DA_DTYPE_F16, DA_DTYPE_BF16}) {
    std::vector<uint16_t> bits(65536), back(65536);
    std::vector<float> f(65536);
    for (int i = 0; i < 65536; i++) bits[i] = static_cast<uint16_t>(i);
    ASSERT_EQ(da_convert_to_f32(type, bits.data(), f.data(), f.size()), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_convert_from_f32(type, f.data(), back.data(), f.size()), DA_STATUS_SUCCESS);
    for (int i = 0; i < 65536; i++) {
      if (std::isnan(f[i])) {
        float again;
        ASSERT_EQ(da_convert_to_f32(type, &back[i], &again, 1), DA_STATUS_SUCCESS);
        EXPECT_TRUE(std::isnan(again)) << da_dtype_name(type) << " pattern " << i;
      } else {
        EXPECT_EQ(back[i], bits[i]) << da_dtype_name(type) << " pattern " << i << " = " << f[i];
      }
    }
  }
}

// Random floats (normal, subnormal, huge) go to the nearest representable value,
// ties to even: checked against the neighbours of the result, in double.
TEST(Common, SixteenBitRoundsToNearestEven) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> exponent(-30.0, 20.0), mant(1.0, 2.0);
  for (da_dtype type : {DA_DTYPE_F16, DA_DTYPE_BF16}) {
    const double max_finite = type == DA_DTYPE_F16 ? 65504.0 : 3.3895313892515355e38;
    for (int it = 0; it < 200000; it++) {
      float x = static_cast<float>(std::ldexp(mant(rng), static_cast<int>(exponent(rng))));
      if (it % 3 == 0) {  // exact midpoints between neighbours
        uint16_t h;
        ASSERT_EQ(da_convert_from_f32(type, &x, &h, 1), DA_STATUS_SUCCESS);
        uint16_t hs[2] = {h, static_cast<uint16_t>(h + 1)};
        float fs[2];
        ASSERT_EQ(da_convert_to_f32(type, hs, fs, 2), DA_STATUS_SUCCESS);
        if (std::isinf(fs[1])) continue;
        x = static_cast<float>((static_cast<double>(fs[0]) + fs[1]) / 2);
      }
      if (it % 2 == 1) x = -x;
      uint16_t h;
      ASSERT_EQ(da_convert_from_f32(type, &x, &h, 1), DA_STATUS_SUCCESS);
      if (std::fabs(static_cast<double>(x)) > max_finite) {
        float inf;
        ASSERT_EQ(da_convert_to_f32(type, &h, &inf, 1), DA_STATUS_SUCCESS);
        // Beyond the largest finite value: inf once past the halfway point.
        if (std::isinf(inf)) continue;
      }
      uint16_t nb[3] = {static_cast<uint16_t>(h - 1), h, static_cast<uint16_t>(h + 1)};
      float v[3];
      ASSERT_EQ(da_convert_to_f32(type, nb, v, 3), DA_STATUS_SUCCESS);
      const double err = std::fabs(static_cast<double>(v[1]) - x);
      for (int k : {0, 2}) {
        if (std::isnan(v[k]) || std::isinf(v[k]) || (v[k] < 0) != (v[1] < 0)) continue;
        const double other = std::fabs(static_cast<double>(v[k]) - x);
        EXPECT_LE(err, other) << da_dtype_name(type) << " x=" << x;
        if (err == other) {
          EXPECT_EQ(h & 1, 0) << da_dtype_name(type) << " tie at x=" << x;
        }
      }
    }
  }
}

TEST(Common, SixteenBitConversionRefusesOtherTypes) {
  float f = 1.0f;
  uint16_t h = 0;
  EXPECT_EQ(da_convert_from_f32(DA_DTYPE_F32, &f, &h, 1), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(da_last_error()).find("f16 or bf16"), std::string::npos);
  EXPECT_EQ(da_convert_to_f32(DA_DTYPE_BF16, nullptr, &f, 1), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_convert_to_f32(DA_DTYPE_BF16, nullptr, nullptr, 0), DA_STATUS_SUCCESS);
}

}  // namespace
