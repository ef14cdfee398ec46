#include "mempool/free_index.h"

#include <stdbool.h>

int mp_size_class_of(const mp_size_classes* classes, size_t size) {
  int lo = 0, hi = classes->count; /* answer in [lo, hi] */
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (classes->bounds[mid] <= size)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static int height(const mp_tree_node* n) { return n ? n->height : 0; }

static void update_height(mp_tree_node* n) {
  int hl = height(n->left), hr = height(n->right);
  n->height = 1 + (hl > hr ? hl : hr);
}

static bool key_less(const mp_tree_node* a, const mp_tree_node* b) {
  return a->size < b->size || (a->size == b->size && a->addr < b->addr);
}

static mp_tree_node* rotate_right(mp_tree_node* y) {
  mp_tree_node* x = y->left;
  y->left = x->right;
  x->right = y;
  update_height(y);
  update_height(x);
  return x;
}

static mp_tree_node* rotate_left(mp_tree_node* x) {
  mp_tree_node* y = x->right;
  x->right = y->left;
  y->left = x;
  update_height(x);
  update_height(y);
  return y;
}

static mp_tree_node* rebalance(mp_tree_node* n) {
  update_height(n);
  int balance = height(n->left) - height(n->right);
  if (balance > 1) {
    if (height(n->left->left) < height(n->left->right)) n->left = rotate_left(n->left);
    return rotate_right(n);
  }
  if (balance < -1) {
    if (height(n->right->right) < height(n->right->left)) n->right = rotate_right(n->right);
    return rotate_left(n);
  }
  return n;
}

/* Recursion depth is the tree height: at most ~1.44 log2(n), under 100 for any
 * number of blocks that fits in memory. */
static mp_tree_node* tree_insert(mp_tree_node* root, mp_tree_node* node) {
  if (root == NULL) return node;
  if (key_less(node, root))
    root->left = tree_insert(root->left, node);
  else
    root->right = tree_insert(root->right, node);
  return rebalance(root);
}

static mp_tree_node* tree_remove_min(mp_tree_node* root, mp_tree_node** min) {
  if (root->left == NULL) {
    *min = root;
    return root->right;
  }
  root->left = tree_remove_min(root->left, min);
  return rebalance(root);
}

static mp_tree_node* tree_remove(mp_tree_node* root, mp_tree_node* node) {
  if (root == NULL) return NULL; /* not present: callers guarantee it is */
  if (root == node) {
    mp_tree_node* left = root->left;
    mp_tree_node* right = root->right;
    if (right == NULL) return left;
    mp_tree_node* successor = NULL;
    right = tree_remove_min(right, &successor);
    successor->left = left;
    successor->right = right;
    return rebalance(successor);
  }
  if (key_less(node, root))
    root->left = tree_remove(root->left, node);
  else
    root->right = tree_remove(root->right, node);
  return rebalance(root);
}

void mp_index_insert(mp_free_index* index, const mp_size_classes* classes, mp_tree_node* node) {
  node->left = node->right = NULL;
  node->height = 1;
  node->bin = mp_size_class_of(classes, node->size);
  index->bins[node->bin] = tree_insert(index->bins[node->bin], node);
  index->nonempty |= (uint64_t)1 << node->bin;
  index->blocks++;
  index->bytes += node->size;
}

void mp_index_remove(mp_free_index* index, mp_tree_node* node) {
  int b = node->bin;
  index->bins[b] = tree_remove(index->bins[b], node);
  if (index->bins[b] == NULL) index->nonempty &= ~((uint64_t)1 << b);
  index->blocks--;
  index->bytes -= node->size;
  node->left = node->right = NULL;
}

static mp_tree_node* tree_min(mp_tree_node* n) {
  while (n->left) n = n->left;
  return n;
}

mp_tree_node* mp_index_best_fit(const mp_free_index* index, const mp_size_classes* classes,
                                size_t size) {
  if (index->nonempty == 0) return NULL;
  int b = mp_size_class_of(classes, size);
  mp_tree_node* best = NULL;
  for (mp_tree_node* n = index->bins[b]; n != NULL;) {
    if (n->size >= size) {
      best = n;
      n = n->left;
    } else {
      n = n->right;
    }
  }
  if (best) return best;
  uint64_t larger = b + 1 < 64 ? index->nonempty & (~(uint64_t)0 << (b + 1)) : 0;
  if (larger == 0) return NULL;
  return tree_min(index->bins[__builtin_ctzll(larger)]);
}

mp_tree_node* mp_index_largest(const mp_free_index* index) {
  if (index->nonempty == 0) return NULL;
  mp_tree_node* n = index->bins[63 - __builtin_clzll(index->nonempty)];
  while (n->right) n = n->right;
  return n;
}

/* Returns the height, or -1 after storing a sentence in *why. */
static int check_tree(const mp_tree_node* n, const mp_tree_node* lo, const mp_tree_node* hi,
                      int bin, const mp_size_classes* classes, size_t* blocks, size_t* bytes,
                      const char** why) {
  if (n == NULL) return 0;
  if ((lo && !key_less(lo, n)) || (hi && !key_less(n, hi))) {
    *why = "free index: tree keys out of (size, address) order";
    return -1;
  }
  if (n->bin != bin || mp_size_class_of(classes, n->size) != bin) {
    *why = "free index: block filed in the wrong size-class bin";
    return -1;
  }
  int hl = check_tree(n->left, lo, n, bin, classes, blocks, bytes, why);
  if (hl < 0) return -1;
  int hr = check_tree(n->right, n, hi, bin, classes, blocks, bytes, why);
  if (hr < 0) return -1;
  int h = 1 + (hl > hr ? hl : hr);
  if (n->height != h) {
    *why = "free index: stale AVL height";
    return -1;
  }
  if (hl - hr > 1 || hr - hl > 1) {
    *why = "free index: AVL tree out of balance";
    return -1;
  }
  (*blocks)++;
  *bytes += n->size;
  return h;
}

const char* mp_index_check(const mp_free_index* index, const mp_size_classes* classes,
                           size_t* blocks, size_t* bytes) {
  const char* why = NULL;
  size_t own_blocks = 0, own_bytes = 0;
  for (int b = 0; b < MP_MAX_BINS; b++) {
    bool set = (index->nonempty >> b) & 1;
    if (set != (index->bins[b] != NULL)) return "free index: non-empty mask disagrees with bins";
    if (check_tree(index->bins[b], NULL, NULL, b, classes, &own_blocks, &own_bytes, &why) < 0)
      return why;
  }
  if (own_blocks != index->blocks || own_bytes != index->bytes)
    return "free index: block or byte count disagrees with the trees";
  *blocks += own_blocks;
  *bytes += own_bytes;
  return NULL;
}
