/* libFuzzer entry point: every input is a sequence of pool operations (fuzz_ops.h);
 * a broken invariant aborts with the reason, which libFuzzer reports as a crash and
 * saves the input for fuzz_replay_test to replay. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "tests/mempool/fuzz_ops.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  char why[512];
  if (mp_fuzz_run(data, size, why, sizeof why) != 0) {
    fprintf(stderr, "mempool invariant broken: %s\n", why);
    abort();
  }
  return 0;
}
