/* Host memory: anonymous mappings (page-aligned, returned to the OS on release, and
 * refused by the kernel rather than a sanitizer's allocator when absurdly large),
 * optionally bound to a NUMA node. Streams mean nothing here. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/error.h"
#include "mempool/backend.h"

#define MPOL_PREFERRED_MODE 1 /* <linux/mempolicy.h> MPOL_PREFERRED */
#define NUMA_MASK_BITS 1024

typedef struct {
  da_mp_backend base;
  int numa_node;
} host_backend;

static da_status bind_to_node(void* ptr, size_t bytes, int node) {
  unsigned long mask[NUMA_MASK_BITS / (8 * sizeof(unsigned long))];
  memset(mask, 0, sizeof mask);
  mask[node / (8 * sizeof(unsigned long))] = 1ul << (node % (8 * sizeof(unsigned long)));
  /* MPOL_PREFERRED: pages go to `node` while it has memory, elsewhere after. The
   * kernel reads maxnode - 1 bits (a historical off-by-one), hence the + 1. */
  if (syscall(SYS_mbind, ptr, bytes, MPOL_PREFERRED_MODE, mask, NUMA_MASK_BITS + 1, 0) != 0) {
    int err = errno;
    return da_error_set(err == EINVAL ? DA_STATUS_INVALID_ARGUMENT : DA_STATUS_NOT_SUPPORTED,
                        "mbind to NUMA node %d failed: %s", node, strerror(err));
  }
  return DA_STATUS_SUCCESS;
}

da_status da_mp_host_map(size_t bytes, int node, void** ptr) {
  void* p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "host: mmap of %zu bytes failed: %s", bytes,
                        strerror(errno));
  if (node >= 0) {
    da_status st = bind_to_node(p, bytes, node);
    if (st != DA_STATUS_SUCCESS) {
      munmap(p, bytes);
      return st;
    }
  }
  *ptr = p;
  return DA_STATUS_SUCCESS;
}

void da_mp_host_unmap(void* ptr, size_t bytes) { munmap(ptr, bytes); }

da_status da_mp_numa_check(int node) {
  if (node >= NUMA_MASK_BITS)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config.numa_node=%d is above %d", node,
                        NUMA_MASK_BITS - 1);
  char path[64];
  snprintf(path, sizeof path, "/sys/devices/system/node/node%d", node);
  struct stat st_buf;
  if (stat(path, &st_buf) != 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config.numa_node=%d does not exist on this machine (no %s)", node, path);
  void* probe = NULL;
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  da_status st = da_mp_host_map(page, node, &probe);
  if (st != DA_STATUS_SUCCESS) return st;
  munmap(probe, page);
  return DA_STATUS_SUCCESS;
}

static da_status host_segment_alloc(da_mp_backend* be, size_t bytes, size_t alignment,
                                    void* stream, void** ptr) {
  (void)alignment; /* pages are aligned beyond any allowed alignment (<= 4096) */
  (void)stream;
  da_status st = da_mp_host_map(bytes, ((host_backend*)be)->numa_node, ptr);
  if (st == DA_STATUS_SUCCESS) be->counters.allocs++;
  return st;
}

static da_status host_segment_free(da_mp_backend* be, void* ptr, size_t bytes, void* stream,
                                   int pending) {
  (void)stream;
  (void)pending;
  da_mp_host_unmap(ptr, bytes);
  be->counters.frees++;
  return DA_STATUS_SUCCESS;
}

static void host_quiesce(da_mp_backend* be) { (void)be; }

static void host_destroy(da_mp_backend* be) { free(be); }

da_status da_mp_backend_host_create(const da_mempool_config* config, da_mp_backend** out) {
  if (config->numa_node >= 0) {
    da_status st = da_mp_numa_check(config->numa_node);
    if (st != DA_STATUS_SUCCESS) return st;
  }
  host_backend* be = calloc(1, sizeof *be);
  if (be == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "out of host memory for the backend");
  be->numa_node = config->numa_node;
  be->base.name = "host memory";
  be->base.segment_alloc = host_segment_alloc;
  be->base.segment_free = host_segment_free;
  be->base.quiesce = host_quiesce;
  be->base.destroy = host_destroy;
  *out = &be->base;
  return DA_STATUS_SUCCESS;
}
