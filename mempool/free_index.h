/* free_index.h: the best-fit index of free blocks. Library-internal.
 *
 * Blocks are binned by size class (bin b holds sizes in [class[b-1], class[b])),
 * each bin an intrusive AVL tree ordered by (size, address), and a bit mask marks
 * the non-empty bins. Best fit = the smallest block >= the request, the lowest
 * address among equals: a lower bound in the request's bin, else the minimum of
 * the next non-empty bin. O(log n) for insert, remove and lookup. */
#ifndef DA_MEMPOOL_FREE_INDEX_H
#define DA_MEMPOOL_FREE_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "mempool/da_mempool.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MP_MAX_BINS (DA_MEMPOOL_MAX_SIZE_CLASSES + 1)

/* Embedded in every free block; size and addr are the key. */
typedef struct mp_tree_node {
  struct mp_tree_node* left;
  struct mp_tree_node* right;
  uintptr_t addr;
  size_t size;
  int height;
  int bin;
} mp_tree_node;

/* Ascending class boundaries shared by every index of a pool. */
typedef struct {
  size_t bounds[DA_MEMPOOL_MAX_SIZE_CLASSES];
  int count;
} mp_size_classes;

typedef struct {
  mp_tree_node* bins[MP_MAX_BINS];
  uint64_t nonempty; /* bit b set iff bins[b] != NULL */
  size_t blocks;
  size_t bytes;
} mp_free_index;

/* The bin (= size class) of a size: the number of boundaries <= size. */
int mp_size_class_of(const mp_size_classes* classes, size_t size);

/* node->addr and node->size must be set; the node must not be in any index. */
void mp_index_insert(mp_free_index* index, const mp_size_classes* classes, mp_tree_node* node);
void mp_index_remove(mp_free_index* index, mp_tree_node* node);
/* Smallest node with size >= size (lowest address among equal sizes), or NULL. */
mp_tree_node* mp_index_best_fit(const mp_free_index* index, const mp_size_classes* classes,
                                size_t size);
/* The largest node, or NULL when empty. */
mp_tree_node* mp_index_largest(const mp_free_index* index);

/* Checks AVL balance, heights, key order, bins and the mask; also counts nodes and
 * bytes into *blocks and *bytes. Returns NULL when sound, else a static sentence. */
const char* mp_index_check(const mp_free_index* index, const mp_size_classes* classes,
                           size_t* blocks, size_t* bytes);

#ifdef __cplusplus
}
#endif

#endif /* DA_MEMPOOL_FREE_INDEX_H */
