#!/usr/bin/env bash
# Runs //tools/da:da (path in $1) through its user-facing contract: exit statuses
# 0 / 1 / 2, one-line usage errors naming the flag or key, JSON output keys, PASS,
# the backend choice (auto falls back to the CPU without a GPU; --backend cuda
# without one fails with a sentence).
set -u

DA="$1"
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
failures=0

fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# expect STATUS DESCRIPTION -- ARGS...: runs da, keeps stdout/stderr in $TMP.
expect() {
  local want="$1" what="$2"
  shift 3
  "$DA" "$@" >"$TMP/out" 2>"$TMP/err"
  local got=$?
  if [[ "$got" -ne "$want" ]]; then
    fail "$what: exit status $got, want $want (da $*)"
    sed 's/^/  stderr: /' "$TMP/err" >&2
  fi
}

# stderr_is_one_line_with TEXT: a usage error is exactly one line naming TEXT.
stderr_is_one_line_with() {
  local lines
  lines=$(wc -l <"$TMP/err")
  [[ "$lines" -eq 1 ]] || fail "stderr has $lines lines, want 1: $(cat "$TMP/err")"
  grep -qF -- "$1" "$TMP/err" || fail "stderr does not mention '$1': $(cat "$TMP/err")"
}

stdout_has() {
  grep -qF -- "$1" "$TMP/out" || fail "stdout lacks '$1'"
}

# stdout_has_json KEY VALUE: "KEY": VALUE in the (cJSON, tab-separated) output.
stdout_has_json() {
  grep -qE -- "\"$1\":[[:space:]]*$2" "$TMP/out" || fail "stdout lacks \"$1\": $2"
}

expect 0 "da --help" -- --help
stdout_has "usage: da"
expect 0 "da demo --help" -- demo --help
stdout_has "--n N"
expect 0 "da bench --help" -- bench --help
stdout_has "--segments"
expect 0 "da version" -- version
stdout_has "da 0."

expect 2 "no command" --
expect 2 "unknown command" -- frobnicate
stderr_is_one_line_with "frobnicate"
expect 2 "unknown flag" -- bench --no-such-flag
stderr_is_one_line_with "--no-such-flag"
expect 2 "non-number" -- bench --n twelve
stderr_is_one_line_with "--n"
expect 2 "negative" -- demo --n -4
stderr_is_one_line_with "--n"
expect 2 "missing value" -- bench --repeats
stderr_is_one_line_with "--repeats"
expect 2 "empty list" -- bench --segments ""
stderr_is_one_line_with "--segments"
expect 2 "mismatched lists (da_attention_validate)" -- bench --segments 128,256 --dilations 1
stderr_is_one_line_with "invalid parameters"
expect 2 "unknown backend" -- bench --backend gpu
stderr_is_one_line_with "--backend"
expect 2 "unknown dtype" -- bench --dtype f32
stderr_is_one_line_with "--dtype"
expect 2 "unknown pass" -- bench --pass bwd
stderr_is_one_line_with "--pass"
expect 2 "--dtype is bench only" -- demo --dtype f16
stderr_is_one_line_with "--dtype"
expect 2 "--ceiling with a workload flag" -- bench --ceiling --dtype f16
stderr_is_one_line_with "--ceiling"

# has_gpu: whether the CUDA passes can run here (then --backend cuda may succeed).
"$DA" bench --backend cuda --n 256 --heads 2 --head-dim 64 --segments 64 --dilations 1 \
  --repeats 1 --warmup 0 --json >"$TMP/out" 2>"$TMP/err"
cuda_status=$?
if [[ $cuda_status -eq 0 ]]; then
  has_gpu=1
  stdout_has_json backend '"cuda"'
else
  has_gpu=0
  [[ $cuda_status -eq 1 ]] ||
    fail "bench --backend cuda without a usable GPU: exit status $cuda_status, want 1"
  stderr_is_one_line_with "--backend cuda"
  expect 1 "demo --backend cuda without a GPU" -- demo --backend cuda
  stderr_is_one_line_with "--backend cuda"
  expect 1 "bench --ceiling --backend cuda without a GPU" -- bench --ceiling --backend cuda
  stderr_is_one_line_with "--backend cuda"
fi

expect 0 "small bench --json" -- bench --n 512 --segments 128,256 --dilations 1,2 --repeats 1 --json
for key in '"forward"' '"median_ms"' '"effective_tflops"' '"segment_lengths"' '"peak_rss_mib"' \
    '"backend"' '"dtype"' '"peak_pool_mib"' '"ceiling_kind"'; do
  stdout_has "$key"
done
[[ $has_gpu -eq 1 ]] || stdout_has_json backend '"cpu"'

head -c 1 "$TMP/out" | grep -q '{' || fail "bench --json output does not start with {"
tail -n 1 "$TMP/out" | grep -q '^}$' || fail "bench --json output does not end with }"

expect 0 "small bench --csv" -- bench --n 512 --segments 128,256 --dilations 1,2 --repeats 1 --csv
[[ $(wc -l <"$TMP/out") -eq 2 ]] || fail "bench --csv should print a header and one row"
stdout_has "forward_median_ms"
stdout_has "peak_pool_mib"

expect 0 "bench --backend cpu --pass fwdbwd" -- bench --backend cpu --pass fwdbwd --n 256 \
  --heads 2 --head-dim 16 --segments 64,128 --dilations 1,2 --repeats 1 --warmup 0 --json
stdout_has_json backend '"cpu"'
stdout_has_json dtype '"f32"'
stdout_has_json forward_backward '[{]' # an object, not null: the backward was timed

cat >"$TMP/bad_key.json" <<'JSON'
{"n": 512, "segment_lengths": [128, 256], "dilation_rates": [1, 2], "no_such_key": 3}
JSON
expect 2 "config with an unknown key" -- bench --config "$TMP/bad_key.json"
stderr_is_one_line_with "no_such_key"
cat >"$TMP/bad_type.json" <<'JSON'
{"n": "512"}
JSON
expect 2 "config with a wrong type" -- bench --config "$TMP/bad_type.json"
stderr_is_one_line_with '"n"'
printf '{"n": 512,,}' >"$TMP/malformed.json"
expect 2 "malformed config" -- bench --config "$TMP/malformed.json"
stderr_is_one_line_with "malformed JSON"
cat >"$TMP/good.json" <<'JSON'
{"n": 256, "heads": 4, "head_dim": 16, "segment_lengths": [64, 128],
 "dilation_rates": [1, 2], "causal": true, "repeats": 1, "warmup": 0}
JSON
expect 0 "config, overridden by a flag" -- bench --config "$TMP/good.json" --n 384 --csv
grep -q ',384,' "$TMP/out" || fail "--n on the command line did not override the config's n"

printf '{}' >"$TMP/config_empty.json"
expect 0 "config check of an empty file (all defaults)" -- config check "$TMP/config_empty.json"
stdout_has '"block_size": 128'
printf '{"sparse": {"foo": 1}}' >"$TMP/config_bad_key.json"
expect 2 "config check with an unknown nested key" -- config check "$TMP/config_bad_key.json"
grep -q "sparse.foo" "$TMP/err" || fail "config check did not name sparse.foo"
printf '{"sparse": {"local_sparsity": 0.3}}' >"$TMP/config_alias.json"
expect 0 "config check with a deprecated alias" -- config check "$TMP/config_alias.json"
grep -q "warning" "$TMP/err" || fail "config check gave no deprecation warning"
expect 2 "config without a file" -- config check

expect 0 "demo --n 1024" -- demo --n 1024
stdout_has "PASS"
stdout_has "backend"
expect 0 "demo --n 1024 --backend cpu" -- demo --n 1024 --backend cpu
stdout_has "PASS"
stdout_has "cpu: f32 (--backend cpu)"

if [[ "$failures" -ne 0 ]]; then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all da CLI checks passed"
