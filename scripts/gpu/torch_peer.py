#!/usr/bin/env python3
"""Torch peer of awq-kernels/benches/awq_gpu.rs and attention_gpu.rs, run on the same GPU in the same job.

Prints one `RESULT {json}` line per cell:
  - impl "cublas_f16": torch.nn.functional.linear(x[M,K], W[N,K]) in fp16 (cuBLAS) on the Qwen2.5-72B layer
    shapes and the same M list as the Rust bench; median time in microseconds;
  - impl "copy": device-to-device copy of a 2 GiB buffer, bytes_moved = bytes read + bytes written;
  - impl "sdpa": torch.nn.functional.scaled_dot_product_attention on the attention bench's cases (same
    case names and keys: InternViT-6B tiles, Qwen2.5-72B prefill and decode), enable_gqa=True where the
    query heads outnumber the KV heads; "sdpa_expanded": the same with K/V repeated to every query head
    beforehand (outside the timing), for the backends that do not take GQA; "sdpa:flash", "sdpa:cudnn",
    "sdpa:efficient": the prefill cases with that backend forced (K/V repeated where it refuses GQA). Contiguous K/V (torch has no
    paged layout), FLOPs and KV bytes counted as the Rust bench does;
  - impl "torch_row": torch's own versions of the row ops of rowwise_gpu.rs (RMSNorm, LayerNorm, GELU,
    SiLU-gate, rotary, embedding, row scatter), same shapes, bf16.
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
    ap.add_argument("--awq-only", action="store_true", help="the copy and F.linear cells only")
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

    if not args.awq_only:
        attention_cells(dev, args.quick)
        row_cells(dev)

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


def sdpa_backends():
    """(name, SDPBackend) for the fused attention backends this torch has."""
    try:
        from torch.nn.attention import SDPBackend
    except ImportError:
        return []
    names = ["FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"]
    return [(n.split("_")[0].lower(), getattr(SDPBackend, n)) for n in names if hasattr(SDPBackend, n)]


def attention_cells(dev, quick):
    """The cases of awq-kernels/benches/attention_gpu.rs through torch SDPA."""
    d = 128
    names = {torch.bfloat16: "bf16", torch.float16: "f16"}

    def cell(impl, case, b, s, ctx, h, h_kv, causal, dtype, pairs, fn):
        try:
            us = bench([fn])
        except Exception as e:  # a backend refusing a shape: say so instead of stopping the peer
            print(f"{impl} {case} b={b} ctx={ctx}: {e}", file=sys.stderr)
            return
        kv_bytes = 2 * b * ctx * h_kv * d * 2
        result(impl=impl, case=case, b=b, s=s, ctx=ctx, h=h, h_kv=h_kv, d=d, causal=causal, dtype=names[dtype],
               us=round(us, 2), tflops=round(4 * h * d * pairs / (us * 1e-6) / 1e12, 1),
               kv_tbps=round(kv_bytes / (us * 1e-6) / 1e12, 3))

    prefills = [
        ("vit6b_tiles", 13, 1025, 25, 25, False, torch.bfloat16),
        ("qwen72b_prefill", 1, 4096, 64, 8, True, torch.bfloat16),
        ("qwen72b_prefill", 1, 4096, 64, 8, True, torch.float16),
    ]
    for case, b, s, h, h_kv, causal, dtype in prefills:
        q = torch.rand(b, h, s, d, dtype=dtype, device=dev) * 2 - 1
        k = torch.rand(b, h_kv, s, d, dtype=dtype, device=dev) * 2 - 1
        v = torch.rand(b, h_kv, s, d, dtype=dtype, device=dev) * 2 - 1
        pairs = b * s * (s + 1) // 2 if causal else b * s * s
        gqa = h != h_kv
        cell("sdpa", case, b, s, s, h, h_kv, causal, dtype, pairs,
             lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa))
        ke, ve = k, v
        if gqa:
            ke, ve = k.repeat_interleave(h // h_kv, dim=1), v.repeat_interleave(h // h_kv, dim=1)
            cell("sdpa_expanded", case, b, s, s, h, h_kv, causal, dtype, pairs,
                 lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=causal))
        # Each backend forced (which one the default picked depends on the torch build and the card; on
        # Hopper, cuDNN's attention may beat FlashAttention-2), with K/V repeated where a backend refuses GQA.
        for name, backend in sdpa_backends():
            def forced(kk, vv, g, backend=backend):
                with torch.nn.attention.sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=g)
            try:
                forced(k, v, gqa)
                fn = lambda: forced(k, v, gqa)  # noqa: E731
            except Exception:
                fn = lambda: forced(ke, ve, False)  # noqa: E731
            cell(f"sdpa:{name}", case, b, s, s, h, h_kv, causal, dtype, pairs, fn)
        del ke, ve
        del q, k, v
        torch.cuda.empty_cache()

    h, h_kv = 64, 8
    for b in [1, 32]:
        for ctx in [1024, 8192, 32768]:
            if quick and b == 32 and ctx == 32768:
                continue
            dtype = torch.bfloat16
            q = torch.rand(b, h, 1, d, dtype=dtype, device=dev) * 2 - 1
            k = torch.rand(b, h_kv, ctx, d, dtype=dtype, device=dev) * 2 - 1
            v = torch.rand(b, h_kv, ctx, d, dtype=dtype, device=dev) * 2 - 1
            # One new token sees the whole context: no mask.
            cell("sdpa", "qwen72b_decode", b, 1, ctx, h, h_kv, True, dtype, b * ctx,
                 lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
            del q, k, v
            torch.cuda.empty_cache()


def row_cells(dev):
    """torch's own versions of the ops of awq-kernels/benches/rowwise_gpu.rs, same shapes and keys (bf16)."""
    dt = torch.bfloat16
    hidden, mlp, heads, d = 8192, 29568, 64, 128
    vit_rows, vit_hidden, vit_mlp = 13 * 1025, 3200, 12800

    def rand(*shape):
        return torch.rand(*shape, dtype=dt, device=dev) * 2 - 1

    def cell(op, shape, fn):
        try:
            us = bench([fn])
        except Exception as e:  # an op this torch lacks: say so, go on
            print(f"torch_row {op}: {e}", file=sys.stderr)
            return
        result(impl="torch_row", op=op, shape=shape, dtype="bf16", us=round(us, 2))

    rows = 4096
    x, r, w = rand(rows, hidden), rand(rows, hidden), rand(hidden)
    cell("rms_norm", f"{rows}x{hidden}", lambda: F.rms_norm(x, (hidden,), w, 1e-6))
    cell("add_rms_norm", f"{rows}x{hidden}", lambda: F.rms_norm(r.add_(x), (hidden,), w, 1e-6))
    cell("add_inplace", f"{rows}x{hidden}", lambda: r.add_(x))
    gu = rand(rows, 2 * mlp)
    cell("silu_mul_halves", f"{rows}x{2 * mlp}", lambda: F.silu(gu[:, :mlp]) * gu[:, mlp:])
    g, u = rand(rows, mlp), rand(rows, mlp)
    cell("silu_mul", f"{rows}x{mlp}", lambda: F.silu(g) * u)
    del gu, g, u
    # transformers' rotate-half rotary with precomputed cos / sin (Qwen2's apply_rotary_pos_emb).
    q = rand(rows, heads, d)
    pos = torch.arange(1000, 1000 + rows, device=dev, dtype=torch.float32)
    inv = 1.0 / (1e6 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
    emb = torch.cat([torch.outer(pos, inv)] * 2, dim=-1)
    cos, sin = emb.cos().to(dt)[:, None, :], emb.sin().to(dt)[:, None, :]

    def rope():
        half = torch.cat((-q[..., d // 2:], q[..., : d // 2]), dim=-1)
        return q * cos + half * sin

    cell("rope", f"{rows}x{heads}x{d}", rope)
    del q
    table = rand(32768, hidden)
    ids = (torch.arange(rows, device=dev) * 7919) % 32768
    cell("embedding", f"{rows}x{hidden}", lambda: F.embedding(ids, table))
    del table, x, r
    xv, wv, bv = rand(vit_rows, vit_hidden), rand(vit_hidden), rand(vit_hidden)
    cell("layer_norm", f"{vit_rows}x{vit_hidden}", lambda: F.layer_norm(xv, (vit_hidden,), wv, bv, 1e-6))
    hv = rand(vit_rows, vit_mlp)
    cell("gelu", f"{vit_rows}x{vit_mlp}", lambda: F.gelu(hv))
    del xv, hv
    image_rows = 13 * 256
    prompt, src = rand(image_rows + 64, hidden), rand(image_rows, hidden)
    idx = torch.arange(2, 2 + image_rows, device=dev)
    cell("scatter_rows", f"{image_rows}x{hidden}", lambda: prompt.index_copy_(0, idx, src))
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
