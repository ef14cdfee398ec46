#!/usr/bin/env bash
# The binary in $1 must load libnccl and must not load libmpi (the GPU machine runs
# it without Debian's Open MPI).
set -u
needed=$(readelf -d "$1" | awk '/NEEDED/ {print $NF}' | tr -d '[]')
echo "$1 needs: $(echo $needed)"
if echo "$needed" | grep -q 'libmpi'; then
  echo "FAIL: $1 links libmpi"
  exit 1
fi
if ! echo "$needed" | grep -q 'libnccl'; then
  echo "FAIL: $1 does not link libnccl"
  exit 1
fi
echo PASS
