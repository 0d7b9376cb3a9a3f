#!/usr/bin/env bash
# Runs on the GPU machine from the bundle made by `cargo xtask gpu-bundle`: every GPU test (REQUIRE_GPU=1),
# then every GPU bench (AWQ linear, attention) next to its torch peer on the same card, and prints the
# tables last.
# Full logs go to $OUT (at most 8 files). `bash run.sh --quick` times fewer batch sizes; `--tests-only`
# skips the benches; `--e2e [MODEL]` runs only the end-to-end bench (`internvl bench-e2e` on the synthetic
# MODEL, default internvl2_5-78b-awq) next to transformers on a synthetic 1B and 4B; `--profile [K,N,M]`
# runs Nsight Compute on every AWQ kernel variant of one shape (default 8192,59136,1: the 78B's gate|up at
# batch 1): throughput against the card's peaks, occupancy, warp stalls (where ncu reads the counters), then
# every stall reason of the register and the cp.async kernels and the SASS lines their stalls land on;
# `--criterion [FILTER]` runs the criterion GPU bench (`awq_criterion_gpu`: AWQ linear and cuBLAS fp16 on the
# 72B shapes, the copy bandwidth) with criterion's statistics; the default run calls it once per cell as a
# smoke test; `--benches-only [--quick]` runs the benches and the torch peer without the tests.
# `DEADLINE=<epoch seconds>` caps every step's time limit so that the whole run ends by then (`lease.sh`
# gives each part of a lease its own deadline). A focused rerun can narrow each part: ONLY_TESTS and
# ONLY_BENCHES (names from bin/LIST, space-separated), SKIP_PROGRAMS=1 (no program checks after the tests),
# PEER_ARGS (e.g. `--awq-only` for torch_peer.py), E2E_KERNELS and E2E_SAMPLING (bench-e2e's lists),
# E2E_PEERS (the transformers shapes, default "1b 4b"; empty for none).
set -uo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
QUICK=""
TESTS_ONLY=0
E2E=""
BENCHES_ONLY=0
[ "${1:-}" = "--quick" ] && QUICK="--quick"
[ "${1:-}" = "--tests-only" ] && TESTS_ONLY=1
[ "${1:-}" = "--benches-only" ] && BENCHES_ONLY=1 && [ "${2:-}" = "--quick" ] && QUICK="--quick"
[ "${1:-}" = "--e2e" ] && E2E="${2:-internvl2_5-78b-awq}"
PROFILE=""
[ "${1:-}" = "--profile" ] && PROFILE="${2:-8192,59136,1}"
CRITERION=0
[ "${1:-}" = "--criterion" ] && CRITERION=1
# The time limit of one step: its own, or what is left before DEADLINE where that is less (at least 1 s, so a
# step past the deadline fails at once, and says so, instead of running over).
limit() {
    local want=$1
    if [ -n "${DEADLINE:-}" ]; then
        local left=$((DEADLINE - $(date +%s)))
        [ "$left" -lt "$want" ] && want=$left
    fi
    [ "$want" -lt 1 ] && want=1
    echo "$want"
}
# cuBLAS and the driver come from the machine's CUDA install (loaded at run time by the binaries, which
# look for `libcublas.so` / `libcublasLt.so`; link the versioned files under those names if needed).
mkdir -p libs
for d in /usr/local/cuda/lib64 /usr/local/cuda-13.0/targets/x86_64-linux/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
for lib in libcublas libcublasLt; do
    found=$(ls /usr/local/cuda*/targets/x86_64-linux/lib/$lib.so* /usr/local/cuda*/lib64/$lib.so* 2>/dev/null | head -1)
    [ -n "$found" ] && ln -sf "$found" "libs/$lib.so"
done
export LD_LIBRARY_PATH="$PWD/libs:$LD_LIBRARY_PATH"

# The executables travel xz-compressed (xtask shrink); unpack them once, with xz or else Python's lzma.
for f in bin/*.xz internvl.xz server.xz; do
    [ -f "$f" ] || continue
    if command -v xz > /dev/null; then
        xz -d -f "$f"
    else
        python3 -c 'import lzma, os, sys; p = sys.argv[1]; open(p[:-3], "wb").write(lzma.open(p).read()); os.remove(p)' "$f"
    fi
    chmod +x "${f%.xz}"
done

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv \
    > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

if [ -n "$PROFILE" ]; then
    echo "== ncu on the AWQ variants of K,N,M = $PROFILE" | tee "$OUT/ncu.log"
    # `--only` makes 1 untimed + 3 timed calls of each variant; the autotuner is off so that its own timing
    # calls are not what gets profiled: 4 (default) + 4 x 10 (decode variants) + 4 x 4 (dequantization).
    AWQ_AUTOTUNE=0 timeout $(limit 500) ncu --clock-control none -k 'regex:awq_(stream|stagger|swap|pipe|dequant)' -c 80 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
        ./bin/bench_awq_gpu --only "$PROFILE" >> "$OUT/ncu.log" 2>&1 || echo "ncu failed (see ncu.log)"
    # Then where the warps of the register, swapped-tile and cp.async kernels wait: every stall reason per
    # issued instruction, and the SASS lines the stall samples land on (SourceCounters), one call of each.
    for k in awq_stream awq_swap_ awq_swapgs awq_pipe; do
        echo "== ncu stall reasons of $k" | tee -a "$OUT/ncu.log"
        AWQ_AUTOTUNE=0 timeout $(limit 200) ncu --clock-control none -k "regex:$k" -c 1 --section SourceCounters \
            --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
            ./bin/bench_awq_gpu --only "$PROFILE" >> "$OUT/ncu.log" 2>&1 || echo "ncu (stall reasons of $k) failed"
    done
    grep -E "awq_|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Grid Size|Stall|Issue Slot|Compute \(SM\)|issue_stalled" "$OUT/ncu.log" | head -150
    exit 0
fi

if [ $CRITERION -eq 1 ]; then
    echo "== criterion: awq_criterion_gpu ${2:-}" | tee "$OUT/criterion.log"
    # Criterion keeps its reports under ./target/criterion (not shipped back); the log has every estimate.
    timeout $(limit 500) ./bin/bench_awq_criterion_gpu --bench ${2:-} >> "$OUT/criterion.log" 2>&1
    rc=$?
    grep -E "^[a-z_]+/|time:|thrpt:" "$OUT/criterion.log"
    exit $rc
fi

if [ -n "$E2E" ]; then
    failed=0
    echo "== internvl bench-e2e --synthetic $E2E" | tee "$OUT/e2e.log"
    # Decode timed with the autotuner's AWQ kernels (what a user gets), then the measured register kernel and
    # the cp.async-pipelined one fixed, greedy and with lmdeploy's sampling defaults (candidates ranked on the
    # device), on the same loaded model.
    timeout $(limit 420) ./internvl bench-e2e --synthetic "$E2E" --device cuda \
        --awq-decode-kernels "${E2E_KERNELS:-tuned,stream,pipe}" --decode-sampling "${E2E_SAMPLING:-greedy,top_k40}" \
        --json >> "$OUT/e2e.log" 2>&1 \
        || { echo "bench-e2e failed"; failed=1; }
    for shape in ${E2E_PEERS-1b 4b}; do
        echo "== transformers peer $shape" | tee -a "$OUT/e2e.log"
        PYTHONUNBUFFERED=1 timeout $(limit 240) python3 e2e_peer.py --shape "$shape" >> "$OUT/e2e.log" 2>&1 \
            || { echo "e2e peer $shape failed"; failed=1; }
    done
    cat "$OUT/e2e.log"
    exit $failed
fi

failed=0
if [ $BENCHES_ONLY -eq 0 ]; then
# The GPU tests read the repository's fixtures (the working tree travels with the bundle).
export INTERNVL_FIXTURES="$PWD/../../fixtures"
: > "$OUT/tests.log"
for t in ${ONLY_TESTS:-$(grep -v '^bench_' bin/LIST)}; do
    echo "== test $t" | tee -a "$OUT/tests.log"
    REQUIRE_GPU=1 timeout $(limit 240) "./bin/$t" --test-threads=1 --nocapture >> "$OUT/tests.log" 2>&1
    rc=$?
    grep -E "^test result|panicked|FAILED" "$OUT/tests.log" | tail -3
    [ $rc -ne 0 ] && { echo "test $t FAILED (rc=$rc)"; failed=1; }
done

if [ "${SKIP_PROGRAMS:-0}" != 1 ]; then
echo "== internvl generate --device cuda (the tiny AWQ Qwen2 fixture)" | tee -a "$OUT/tests.log"
timeout $(limit 120) ./internvl generate --model "$PWD/../../fixtures/qwen2-0.5b-like-awq" --device cuda --max-new-tokens 16 \
    --ignore-eos "Hello" >> "$OUT/tests.log" 2>&1 \
    || { echo "internvl on the GPU FAILED"; failed=1; }
tail -2 "$OUT/tests.log"
echo "== internvl chat --device cuda with an image (embedded InternVL checkpoint)" | tee -a "$OUT/tests.log"
timeout $(limit 120) ./internvl chat --device cuda --image "$PWD/../../fixtures/preprocess/src/photo.jpg" --max-new-tokens 8 \
    --ignore-eos "Describe the image." >> "$OUT/tests.log" 2>&1 || { echo "internvl chat on the GPU FAILED"; failed=1; }
tail -2 "$OUT/tests.log"
echo "== server --device cuda: a chat with an image and 16 concurrent streams" | tee -a "$OUT/tests.log"
PYTHONUNBUFFERED=1 timeout $(limit 180) python3 server_check.py --server ./server \
    --image "$PWD/../../fixtures/preprocess/src/tiny7x5.png" >> "$OUT/tests.log" 2>&1 \
    || { echo "the server on the GPU FAILED"; failed=1; }
tail -8 "$OUT/tests.log"
echo "== internvl bench-e2e --synthetic tiny (a smoke run of the end-to-end bench: made on the GPU, every path)" \
    | tee -a "$OUT/tests.log"
timeout $(limit 120) ./internvl bench-e2e --synthetic tiny --device cuda --decode-steps 4 --repeats 1 \
    --awq-decode-kernels tuned,stream,pipe --decode-sampling greedy,top_k40 >> "$OUT/tests.log" 2>&1 \
    || { echo "bench-e2e on the GPU FAILED"; failed=1; }
tail -3 "$OUT/tests.log"
fi

if [ $TESTS_ONLY -eq 1 ]; then
    [ $failed -ne 0 ] && echo "SOME CHECKS FAILED"
    exit $failed
fi
fi

: > "$OUT/bench.log"
for b in ${ONLY_BENCHES:-$(grep '^bench_' bin/LIST)}; do
    # `--quick` leaves out the criterion smoke test (its cells are the AWQ bench's, timed again).
    [ -n "$QUICK" ] && [ "$b" = bench_awq_criterion_gpu ] && continue
    echo "== bench $b"
    timeout $(limit 240) "./bin/$b" $QUICK >> "$OUT/bench.log" 2>&1 || { echo "bench $b failed"; failed=1; }
done
echo "== torch peer"
PYTHONUNBUFFERED=1 timeout $(limit 420) python3 torch_peer.py $QUICK ${PEER_ARGS:-} > "$OUT/peer.log" 2>&1 || { echo "peer failed"; tail -5 "$OUT/peer.log"; failed=1; }

python3 summarize.py "$OUT/gpu.txt" "$OUT/bench.log" "$OUT/peer.log" > "$OUT/table.md" 2>&1
cat "$OUT/table.md"
echo "== the AWQ autotuner's choices (median us of each candidate)"
grep '^TUNED' "$OUT/bench.log"
[ $failed -ne 0 ] && echo "SOME CHECKS FAILED"
exit $failed
