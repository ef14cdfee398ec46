// The cache of the Hopper forward's tensor maps (TileMaps, cuda_launch.h), host
// only. Encoding a map is host work (~1 us; two per distinct dilation), and a
// training loop calls with the same buffers and shape step after step, so a plan's
// maps are encoded once (make_tile_maps in cuda_sm90.cuh). A TileMaps holds
// addresses and sizes only, so the key is everything the encoder reads: equal keys
// give byte-identical maps, and a buffer freed and allocated again at the same
// address with the same shape needs no new maps. Separate from the kernels so the
// CPU tests check the key and the replacement (tests/attention/cuda_geometry_test.cc).
#ifndef DA_TILE_MAPS_CACHE_H
#define DA_TILE_MAPS_CACHE_H

#include <string.h>

#include <mutex>

#include "attention/cuda_launch.h"

namespace da_cuda {

struct TileMapsKey {
  const void* t0;
  const void* t1;
  long long tokens;
  int dtype;  // the element type's tensor-map data type
  int heads, D, box_rows, num_patterns;
  int r[DA_MAX_PATTERNS];
};

// The key of the maps encode_tile_maps makes for tensors t0 and t1 ([a.tokens,
// heads, D], element type `dtype`) and tiles of box_rows rows. Zero-filled first,
// padding included, so keys compare by memcmp.
inline TileMapsKey tile_maps_key(const KernelArgs& a, const void* t0, const void* t1, int dtype,
                                 int heads, int D, int box_rows) {
  TileMapsKey key;
  memset(&key, 0, sizeof key);
  key.t0 = t0;
  key.t1 = t1;
  key.tokens = a.tokens;
  key.dtype = dtype;
  key.heads = heads;
  key.D = D;
  key.box_rows = box_rows;
  key.num_patterns = a.num_patterns;
  for (int i = 0; i < a.num_patterns && i < DA_MAX_PATTERNS; ++i) key.r[i] = a.r[i];
  return key;
}

// The last kEntries keys and their maps, the oldest replaced first. Thread-safe
// (one mutex; a hit copies the maps out).
class TileMapsCache {
 public:
  static constexpr int kEntries = 8;

  bool Find(const TileMapsKey& key, TileMaps* maps) {
    std::lock_guard<std::mutex> lock(mu_);
    for (int i = 0; i < used_; ++i) {
      if (memcmp(&keys_[i], &key, sizeof key) == 0) {
        *maps = maps_[i];
        return true;
      }
    }
    return false;
  }

  void Insert(const TileMapsKey& key, const TileMaps& maps) {
    std::lock_guard<std::mutex> lock(mu_);
    keys_[next_] = key;
    maps_[next_] = maps;
    next_ = (next_ + 1) % kEntries;
    if (used_ < kEntries) ++used_;
  }

 private:
  std::mutex mu_;
  TileMapsKey keys_[kEntries];
  TileMaps maps_[kEntries];
  int used_ = 0, next_ = 0;
};

}  // namespace da_cuda

#endif  // DA_TILE_MAPS_CACHE_H
