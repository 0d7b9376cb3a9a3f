#!/usr/bin/env bash
# One lease, one call: `bash target/gpu-bundle/lease.sh [SECONDS]` runs what the bundle checks in the order
# that matters most, each part under its own deadline, so that the whole call ends within SECONDS (default
# 540) and a part that runs long cannot take the others' time:
#   1. every GPU test and the programs on the GPU (`run.sh --tests-only`), until at most 170 s in;
#   2. the kernel benches next to torch, `--quick` (`run.sh --benches-only --quick`), until E2E_RESERVE
#      seconds (default 210) before the end;
#   3. the end-to-end bench of the synthetic 78B-AWQ and its transformers peers (`run.sh --e2e`), to the end.
# Every part writes its logs under $OUT as run.sh does; the tables and figures are printed last.
set -uo pipefail
cd "$(dirname "$0")"
total=${1:-540}
start=$(date +%s)
end=$((start + total))
reserve=${E2E_RESERVE:-210}
tests_end=$((start + 170))
[ $tests_end -gt $((end - reserve - 60)) ] && tests_end=$((end - reserve - 60))
failed=0
DEADLINE=$tests_end bash run.sh --tests-only || failed=1
echo "== tests done after $(($(date +%s) - start)) s"
DEADLINE=$((end - reserve)) bash run.sh --benches-only --quick || failed=1
echo "== benches done after $(($(date +%s) - start)) s"
DEADLINE=$((end - 5)) bash run.sh --e2e > /dev/null || failed=1
echo "== e2e done after $(($(date +%s) - start)) s"
OUT=${OUT:-$PWD/out}
grep -v '^awq ' "$OUT/e2e.log" | tail -60
[ $failed -ne 0 ] && echo "SOME CHECKS FAILED"
exit $failed
