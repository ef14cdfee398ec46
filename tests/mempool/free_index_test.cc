// The free-block index (binned AVL trees) and the pointer map, against brute force.
#include <stdint.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "mempool/free_index.h"
#include "mempool/ptrmap.h"

namespace {

mp_size_classes Classes(std::vector<size_t> bounds) {
  mp_size_classes c{};
  c.count = (int)bounds.size();
  std::copy(bounds.begin(), bounds.end(), c.bounds);
  return c;
}

TEST(SizeClass, CountsBoundsAtOrBelow) {
  mp_size_classes c = Classes({100, 500, 1000});
  EXPECT_EQ(mp_size_class_of(&c, 0), 0);
  EXPECT_EQ(mp_size_class_of(&c, 99), 0);
  EXPECT_EQ(mp_size_class_of(&c, 100), 1);
  EXPECT_EQ(mp_size_class_of(&c, 499), 1);
  EXPECT_EQ(mp_size_class_of(&c, 500), 2);
  EXPECT_EQ(mp_size_class_of(&c, 1000), 3);
  EXPECT_EQ(mp_size_class_of(&c, SIZE_MAX), 3);
}

TEST(FreeIndex, BestFitMatchesBruteForceUnderRandomInsertAndRemove) {
  mp_size_classes classes = Classes({256, 1024, 4096, 16384, 65536});
  std::mt19937_64 rng(7);
  std::vector<mp_tree_node> nodes(4000);
  mp_free_index index{};
  std::set<std::pair<size_t, uintptr_t>> model;  // (size, addr): the same order
  std::vector<size_t> in;                        // indices of inserted nodes
  std::vector<size_t> out;
  for (size_t i = 0; i < nodes.size(); i++) out.push_back(i);
  for (int step = 0; step < 40000; step++) {
    bool insert = !out.empty() && (in.empty() || rng() % 100 < 55);
    if (insert) {
      size_t pick = rng() % out.size();
      size_t i = out[pick];
      out[pick] = out.back();
      out.pop_back();
      nodes[i].addr = 0x100000 + i * 0x1000;
      // Many equal sizes, so the address tie-break matters.
      nodes[i].size = 256 * (1 + (rng() % 4 == 0 ? rng() % 400 : rng() % 8));
      mp_index_insert(&index, &classes, &nodes[i]);
      model.insert({nodes[i].size, nodes[i].addr});
      in.push_back(i);
    } else {
      size_t pick = rng() % in.size();
      size_t i = in[pick];
      in[pick] = in.back();
      in.pop_back();
      mp_index_remove(&index, &nodes[i]);
      model.erase({nodes[i].size, nodes[i].addr});
      out.push_back(i);
    }
    size_t want = 1 + rng() % (256 * 420);
    mp_tree_node* got = mp_index_best_fit(&index, &classes, want);
    auto expect = model.lower_bound({want, 0});
    if (expect == model.end()) {
      ASSERT_EQ(got, nullptr) << "step " << step;
    } else {
      ASSERT_NE(got, nullptr) << "step " << step;
      ASSERT_EQ(got->size, expect->first) << "step " << step;
      ASSERT_EQ(got->addr, expect->second) << "step " << step;
    }
    mp_tree_node* largest = mp_index_largest(&index);
    if (model.empty())
      ASSERT_EQ(largest, nullptr);
    else
      ASSERT_EQ(largest->size, model.rbegin()->first);
    if (step % 97 == 0) {
      size_t blocks = 0, bytes = 0;
      const char* why = mp_index_check(&index, &classes, &blocks, &bytes);
      ASSERT_EQ(why, nullptr) << why;
      ASSERT_EQ(blocks, model.size());
    }
  }
}

TEST(FreeIndex, StaysBalancedUnderSortedInserts) {
  mp_size_classes classes = Classes({1u << 30});
  std::vector<mp_tree_node> nodes(1 << 14);
  mp_free_index index{};
  for (size_t i = 0; i < nodes.size(); i++) {
    nodes[i].addr = i * 256;
    nodes[i].size = 256 * (i + 1);  // ascending: the worst case for an unbalanced tree
    mp_index_insert(&index, &classes, &nodes[i]);
  }
  size_t blocks = 0, bytes = 0;
  ASSERT_EQ(mp_index_check(&index, &classes, &blocks, &bytes), nullptr);
  EXPECT_LE(index.bins[0]->height, 16);  // AVL: < 1.44 log2(n + 2)
}

TEST(PtrMap, MatchesUnorderedMapUnderChurn) {
  std::mt19937_64 rng(11);
  mp_ptrmap map{};
  std::unordered_map<uintptr_t, uintptr_t> model;
  std::vector<uintptr_t> keys;
  for (int step = 0; step < 200000; step++) {
    int op = (int)(rng() % 3);
    if (op < 2 || keys.empty()) {
      // Aligned addresses and tiny stream handles (0, 1, 2) alike.
      uintptr_t key = rng() % 5 == 0 ? rng() % 8 : (rng() % 50000) * 256;
      ASSERT_TRUE(mp_ptrmap_reserve(&map, map.count + 1));
      if (!model.count(key)) keys.push_back(key);
      model[key] = key ^ 0x5a5a;
      mp_ptrmap_put(&map, key, (void*)(key ^ 0x5a5a));
    } else {
      size_t pick = rng() % keys.size();
      uintptr_t key = keys[pick];
      keys[pick] = keys.back();
      keys.pop_back();
      ASSERT_EQ((uintptr_t)mp_ptrmap_remove(&map, key), key ^ 0x5a5a);
      model.erase(key);
      ASSERT_EQ(mp_ptrmap_remove(&map, key), nullptr);
    }
    ASSERT_EQ(map.count, model.size());
    if (step % 1000 == 0) {
      for (auto& kv : model) ASSERT_EQ((uintptr_t)mp_ptrmap_get(&map, kv.first), kv.second);
    }
  }
  EXPECT_EQ(mp_ptrmap_get(&map, 12345 * 256 + 1), nullptr);
  mp_ptrmap_free(&map);
}

}  // namespace
