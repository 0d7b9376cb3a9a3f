#!/usr/bin/env python3
"""Torch peer of awq-kernels/benches/awq_gpu.rs, run on the same GPU in the same job.

Prints one `RESULT {json}` line per cell:
  - impl "cublas_f16": torch.nn.functional.linear(x[M,K], W[N,K]) in fp16 (cuBLAS) on the Qwen2.5-72B layer
    shapes and the same M list as the Rust bench; median time in microseconds;
  - impl "copy": device-to-device copy of a 2 GiB buffer, bytes_moved = bytes read + bytes written.
Random data; three weight copies rotated so that the weights are not L2 hits; timing by
triton.testing.do_bench (median) when triton imports, otherwise CUDA events (median of 25 after 3 warm-ups).
`--quick` runs M in {1, 16, 1024} only.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F

SHAPES = [(8192, 10240), (8192, 8192), (8192, 59136), (29568, 8192)]
COPIES = 3


def bench(fn_list):
    """Median microseconds of calling fn_list[i % len] once per timed iteration."""
    state = {"i": 0}

    def step():
        fn_list[state["i"] % len(fn_list)]()
        state["i"] += 1

    try:
        import triton.testing

        return triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median") * 1e3
    except Exception:  # triton missing or too old: CUDA events
        times = []
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        for i in range(3 + 25):
            start.record()
            step()
            end.record()
            end.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end) * 1e3)
        times.sort()
        return times[len(times) // 2]


def result(**kw):
    print("RESULT " + json.dumps(kw), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device; torch peer skipped", file=sys.stderr)
        return
    dev = torch.device("cuda")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}", file=sys.stderr)
    ms = [1, 16, 1024] if args.quick else [1, 4, 16, 64, 256, 1024, 4096]
    torch.manual_seed(0)

    # Copy bandwidth: 2 GiB read + 2 GiB written per copy.
    nbytes = 2 << 30
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    us = bench([lambda: dst.copy_(src)])
    result(impl="copy", bytes_moved=2 * nbytes, us=round(us, 2), tbps=round(2 * nbytes / (us * 1e-6) / 1e12, 3))
    del src, dst
    torch.cuda.empty_cache()

    for k, n in SHAPES:
        ws = [torch.randn(n, k, dtype=torch.float16, device=dev) * 0.02 for _ in range(COPIES)]
        for m in ms:
            x = torch.randn(m, k, dtype=torch.float16, device=dev)
            fns = [(lambda w=w: F.linear(x, w)) for w in ws]
            us = bench(fns)
            result(
                impl="cublas_f16",
                k=k,
                n=n,
                m=m,
                dtype="f16",
                us=round(us, 2),
                weight_tbps=round(n * k * 2 / (us * 1e-6) / 1e12, 3),
                tflops=round(2 * m * n * k / (us * 1e-6) / 1e12, 1),
            )
            del x
        del ws
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
