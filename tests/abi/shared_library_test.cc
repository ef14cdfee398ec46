#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "attention/dilated_attention.h"

namespace {

std::string LibraryPath() {
  const char* srcdir = getenv("TEST_SRCDIR");
  const char* workspace = getenv("TEST_WORKSPACE");
  EXPECT_NE(srcdir, nullptr);
  return std::string(srcdir ? srcdir : ".") + "/" + (workspace ? workspace : "dilated_attention") +
         "/libdilated_attention.so";
}

class SharedLibrary : public ::testing::Test {
 protected:
  void SetUp() override {
    // Never unloaded: OpenMP worker threads may still run library code.
    handle_ = dlopen(LibraryPath().c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    ASSERT_NE(handle_, nullptr) << dlerror();
  }
  template <typename F>
  F Sym(const char* name) {
    void* p = dlsym(handle_, name);
    EXPECT_NE(p, nullptr) << name << ": " << dlerror();
    return reinterpret_cast<F>(p);
  }
  void* handle_ = nullptr;
};

TEST_F(SharedLibrary, ExportsTheCApiAndRunsAForwardPass) {
  auto version = Sym<const char* (*)(void)>("da_version_string");
  auto defaults = Sym<da_attention_params (*)(void)>("da_attention_params_default");
  auto forward = Sym<decltype(&da_attention_forward_cpu)>("da_attention_forward_cpu");
  auto last_error = Sym<const char* (*)(void)>("da_last_error");
  ASSERT_TRUE(version && defaults && forward && last_error);
  EXPECT_STREQ(version(), "0.1.0");

  const int n = 40, h = 2, d = 8;
  int w[] = {16, 40}, r[] = {1, 4};
  da_attention_params p = defaults();
  p.segment_lengths = w;
  p.dilation_rates = r;
  p.num_segment_lengths = p.num_dilation_rates = 2;
  p.num_heads = h;
  p.head_dim = d;
  da_attention_batch b = {1, n, nullptr};
  std::vector<float> q(n * h * d), k(q.size()), v(q.size()), out(q.size(), NAN), lse(n * h, NAN);
  for (size_t i = 0; i < q.size(); i++) {
    q[i] = sinf(0.37f * i);
    k[i] = cosf(0.11f * i);
    v[i] = sinf(0.05f * i + 1.0f);
  }
  ASSERT_EQ(forward(&p, &b, q.data(), k.data(), v.data(), out.data(), lse.data()),
            DA_STATUS_SUCCESS)
      << last_error();
  for (float x : out) ASSERT_TRUE(std::isfinite(x));
  for (float x : lse) ASSERT_TRUE(std::isfinite(x));  // r = 1 covers every query

  p.head_dim = 0;
  EXPECT_EQ(forward(&p, &b, q.data(), k.data(), v.data(), out.data(), lse.data()),
            DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(last_error(), "head_dim"), nullptr) << last_error();
}

TEST_F(SharedLibrary, InternalSymbolsAreHidden) {
  // Library-internal helpers keep the da_ prefix but must not be part of the ABI.
  for (const char* name : {"da_error_set", "da_error_clear", "da_attn_plan_init"})
    EXPECT_EQ(dlsym(handle_, name), nullptr) << name << " is exported";
}

}  // namespace
