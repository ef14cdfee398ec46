// The zstd shuffle codec: bit-exact round trips on random and adversarial data,
// frame validation, and the compression ratio shuffling buys on gradients.
#include <math.h>
#include <string.h>

#include <vector>

#include <gtest/gtest.h>

#include "comm/compress.h"
#include "comm/da_comm.h"
#include "tests/comm/test_util.h"

namespace {

struct Codec {
  da_codec* c = nullptr;
  explicit Codec(da_codec_config cfg) { EXPECT_EQ(da_codec_create(&cfg, &c), DA_STATUS_SUCCESS) << da_last_error(); }
  ~Codec() { da_codec_destroy(c); }
};

std::vector<unsigned char> compress(da_codec* c, const void* src, size_t bytes) {
  std::vector<unsigned char> out(da_codec_compress_bound(bytes));
  size_t written = 0;
  EXPECT_EQ(da_codec_compress(c, src, bytes, out.data(), out.size(), &written), DA_STATUS_SUCCESS)
      << da_last_error();
  out.resize(written);
  return out;
}

void expect_round_trip(da_codec* c, const void* src, size_t bytes) {
  std::vector<unsigned char> frame = compress(c, src, bytes);
  size_t announced = 0;
  ASSERT_EQ(da_codec_decompressed_size(frame.data(), frame.size(), &announced), DA_STATUS_SUCCESS);
  ASSERT_EQ(announced, bytes);
  std::vector<unsigned char> back(bytes + 1, 0xa5);  // poisoned
  size_t got = 0;
  ASSERT_EQ(da_codec_decompress(c, frame.data(), frame.size(), back.data(), bytes, &got), DA_STATUS_SUCCESS)
      << da_last_error();
  ASSERT_EQ(got, bytes);
  if (bytes) {
    ASSERT_EQ(memcmp(back.data(), src, bytes), 0);
  }
  ASSERT_EQ(back[bytes], 0xa5);  // nothing written past the end
}

std::vector<unsigned char> random_bytes(uint64_t seed, size_t n) {
  da_test::Rng r(seed);
  std::vector<unsigned char> v(n);
  for (auto& b : v) b = (unsigned char)r.next();
  return v;
}

TEST(Codec, RoundTripsEveryShapeOfInput) {
  std::vector<std::vector<unsigned char>> inputs;
  inputs.push_back({});                                   // empty
  inputs.push_back({42});                                 // one byte (below any element)
  inputs.push_back(random_bytes(1, 4099));                // incompressible, odd tail
  inputs.push_back(std::vector<unsigned char>(1 << 20, 0x3c));  // all equal
  {
    std::vector<float> f = da_test::gradient(2, 250001);
    inputs.push_back(std::vector<unsigned char>((unsigned char*)f.data(), (unsigned char*)(f.data() + f.size())));
  }
  {  // NaN (with payloads), infinities, signed zeros, subnormals
    std::vector<uint32_t> special;
    da_test::Rng r(3);
    for (int i = 0; i < 100003; i++) {
      switch (i % 6) {
        case 0: special.push_back(0x7fc00000u | (uint32_t)(r.next() & 0x3fffff)); break;
        case 1: special.push_back(0xff800001u + (uint32_t)(r.next() & 0xffff)); break;
        case 2: special.push_back(i & 8 ? 0x7f800000u : 0xff800000u); break;
        case 3: special.push_back(i & 8 ? 0x80000000u : 0u); break;
        case 4: special.push_back((uint32_t)(r.next() & 0x007fffffu)); break;
        default: special.push_back((uint32_t)r.next()); break;
      }
    }
    inputs.push_back(std::vector<unsigned char>((unsigned char*)special.data(),
                                                (unsigned char*)(special.data() + special.size())));
  }
  for (size_t e : {1u, 2u, 4u, 8u})
    for (int threads : {0, 2})
      for (int level : {1, 3, 9}) {
        da_codec_config cfg = da_codec_config_default();
        cfg.element_bytes = e;
        cfg.threads = threads;
        cfg.level = level;
        Codec codec(cfg);
        for (size_t i = 0; i < inputs.size(); i++) {
          SCOPED_TRACE(testing::Message() << "e=" << e << " threads=" << threads << " level=" << level
                                          << " input=" << i);
          expect_round_trip(codec.c, inputs[i].data(), inputs[i].size());
        }
      }
}

TEST(Codec, LargeMultiThreadedRoundTrip) {
  da_codec_config cfg = da_codec_config_default();
  cfg.threads = 2;
  Codec codec(cfg);
  std::vector<float> f = da_test::gradient(4, 6u << 20);  // 24 MiB: several zstd jobs
  expect_round_trip(codec.c, f.data(), f.size() * sizeof(float));
}

TEST(Codec, ShufflingHelpsOnGradients) {
  // bf16 gradients: raw zstd finds little; grouped bytes put the exponents together.
  std::vector<float> g = da_test::gradient(5, 1u << 20);
  std::vector<uint16_t> bf(g.size());
  for (size_t i = 0; i < g.size(); i++) bf[i] = da_cx_f32_to_bf16(g[i]);
  da_codec_config raw = da_codec_config_default(), shuffled = da_codec_config_default();
  raw.element_bytes = 1;
  shuffled.element_bytes = 2;
  Codec a(raw), b(shuffled);
  size_t bytes = bf.size() * 2;
  double raw_ratio = (double)bytes / compress(a.c, bf.data(), bytes).size();
  double shuffled_ratio = (double)bytes / compress(b.c, bf.data(), bytes).size();
  printf("bf16 gradients: raw %.3fx, shuffled %.3fx\n", raw_ratio, shuffled_ratio);
  EXPECT_GT(shuffled_ratio, raw_ratio * 1.1);
  EXPECT_GT(shuffled_ratio, 1.2);
}

TEST(Codec, RejectsDamagedFramesAndSmallBuffers) {
  Codec codec(da_codec_config_default());
  std::vector<float> f = da_test::gradient(6, 10000);
  size_t bytes = f.size() * 4;
  std::vector<unsigned char> frame = compress(codec.c, f.data(), bytes);
  std::vector<unsigned char> out(bytes);
  size_t got = 0;
  // Too small a destination.
  EXPECT_EQ(da_codec_decompress(codec.c, frame.data(), frame.size(), out.data(), bytes - 1, &got),
            DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "dst_capacity"), nullptr);
  // Truncated.
  EXPECT_EQ(da_codec_decompress(codec.c, frame.data(), frame.size() - 5, out.data(), bytes, &got),
            DA_STATUS_INVALID_ARGUMENT);
  // A flipped bit in the body: the checksum catches it.
  std::vector<unsigned char> bad = frame;
  bad[bad.size() / 2] ^= 0x10;
  EXPECT_EQ(da_codec_decompress(codec.c, bad.data(), bad.size(), out.data(), bytes, &got),
            DA_STATUS_INVALID_ARGUMENT);
  // Foreign data.
  bad = frame;
  bad[0] = 'X';
  EXPECT_EQ(da_codec_decompress(codec.c, bad.data(), bad.size(), out.data(), bytes, &got),
            DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "DAZ1"), nullptr);
  // A header lying about the size.
  bad = frame;
  bad[8] ^= 1;
  EXPECT_EQ(da_codec_decompress(codec.c, bad.data(), bad.size(), out.data(), bytes + 8, &got),
            DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_codec_decompress(codec.c, frame.data(), 3, out.data(), bytes, &got), DA_STATUS_INVALID_ARGUMENT);
  // Compression into too small a buffer.
  std::vector<unsigned char> tiny(20);
  std::vector<unsigned char> noise = random_bytes(7, 1000);
  EXPECT_EQ(da_codec_compress(codec.c, noise.data(), noise.size(), tiny.data(), tiny.size(), &got),
            DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "da_codec_compress_bound"), nullptr);
}

TEST(Codec, ConfigChecks) {
  da_codec* c = nullptr;
  da_codec_config cfg = da_codec_config_default();
  cfg.element_bytes = 3;
  EXPECT_EQ(da_codec_create(&cfg, &c), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "element_bytes"), nullptr);
  cfg = da_codec_config_default();
  cfg.level = 99;
  EXPECT_EQ(da_codec_create(&cfg, &c), DA_STATUS_INVALID_ARGUMENT);
  cfg = da_codec_config_default();
  cfg.threads = -1;
  EXPECT_EQ(da_codec_create(&cfg, &c), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_codec_create(nullptr, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_codec_destroy(nullptr), DA_STATUS_SUCCESS);
}

}  // namespace
