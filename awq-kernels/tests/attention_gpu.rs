//! The GPU attention kernels (`kernels/attention.cu`: flash prefill, split-KV decode) and the row kernels
//! (`kernels/rowwise.cu`) against the CPU ops on random inputs. Outputs are poisoned (NaN) before every
//! launch, so an element a kernel forgets to write fails. Without a GPU these tests say so and pass; with
//! `REQUIRE_GPU=1` a missing GPU fails them.
//!
//! Inputs are exactly representable in the dtype, so both sides see the same numbers.
//!
//! Attention tolerance (FlashAttention-3's rule): the kernel may err at most twice as much as the same
//! math done naively in the low precision, measured against the f32 CPU reference. The naive version
//! (`Problem::naive`) computes the scores and softmax in f32, rounds the probabilities to the dtype (the
//! kernel feeds P to the tensor cores in f16/bf16) and rounds the output once. Its error is about one unit
//! roundoff u of the dtype (2^-11 for f16, 2^-8 for bf16) times the value magnitude; the kernel's other
//! differences (f32 summation order, exp2 with the log2 e factor folded into the scale) are ~1e-6
//! relative. A floor of u times the largest output keeps the rule meaningful where the naive error
//! happens to be tiny. Lengths in the random cases stay in the hundreds, so one key too many or too few
//! (a weight of about 1/length) is well above the f16 tolerance.
//!
//! Row kernels: like `ops_gpu.rs`, 2 ulps of the dtype relative to the largest output (f32 inside, one
//! rounding per store; the fused add also rounds the stored sum, half an ulp more).
#![cfg(feature = "cuda")]

use awq_kernels::cuda::attention::{self as gpu_attn, AttnBatch};
use awq_kernels::cuda::{
    buffer::{poison_outputs, GpuBuffer},
    gpu_for_tests,
};
use awq_kernels::kv_cache::{BlockTable, KvCacheConfig, PagedKvCache};
use awq_kernels::ops::activation::gelu;
use awq_kernels::ops::attention::{
    bidirectional_attention, flash_attention, paged_attention, AttnSeq, SeqRows,
};
use awq_kernels::ops::norm::{add_rms_norm, layer_norm};
use awq_kernels::ops::scatter_rows;
use awq_kernels::{DType, Device, Tensor};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const GPU: Device = Device::Cuda(0);

/// Unit roundoff of the dtype (half an ulp at 1).
fn unit_roundoff(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 2f32.powi(-11),
        DType::BF16 => 2f32.powi(-8),
        _ => 2f32.powi(-24),
    }
}

fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_f32(x).to_f32(),
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

fn random_vec(rng: &mut ChaCha8Rng, n: usize, scale: f32, dtype: DType) -> Vec<f32> {
    (0..n)
        .map(|_| round_to(dtype, rng.gen_range(-1.0f32..1.0) * scale))
        .collect()
}

fn cpu(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

fn on_gpu(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap().to_device(GPU).unwrap()
}

/// One sequence: its query rows `[q_len, h, d]` (its newest tokens) and all its keys and values
/// `[kv_len, h_kv, d]`.
struct Seq {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    q_len: usize,
    kv_len: usize,
}

struct Problem {
    h: usize,
    h_kv: usize,
    d: usize,
    dtype: DType,
    causal: bool,
    scale: f32,
    seqs: Vec<Seq>,
}

impl Problem {
    #[allow(clippy::too_many_arguments)]
    fn random(
        seed: u64,
        h_kv: usize,
        group: usize,
        d: usize,
        dtype: DType,
        causal: bool,
        lens: &[(usize, usize)],
    ) -> Problem {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let h = h_kv * group;
        let seqs = lens
            .iter()
            .map(|&(q_len, kv_len)| Seq {
                // Queries of magnitude 2 and keys of 1.5 give scores of a few units: sharp enough that a
                // wrong mask or scale shows, soft enough that many keys count.
                q: random_vec(&mut rng, q_len * h * d, 2.0, dtype),
                k: random_vec(&mut rng, kv_len * h_kv * d, 1.5, dtype),
                v: random_vec(&mut rng, kv_len * h_kv * d, 1.0, dtype),
                q_len,
                kv_len,
            })
            .collect();
        Problem {
            h,
            h_kv,
            d,
            dtype,
            causal,
            scale: 1.0 / (d as f32).sqrt(),
            seqs,
        }
    }

    fn t(&self) -> usize {
        self.seqs.iter().map(|s| s.q_len).sum()
    }

    /// All query rows `[t, h, d]`, sequence after sequence.
    fn q(&self) -> Tensor {
        let v: Vec<f32> = self.seqs.iter().flat_map(|s| s.q.clone()).collect();
        cpu(v, &[self.t(), self.h, self.d])
    }

    /// Keys and values of every sequence, concatenated `[t_k, h_kv, d]`, and the cumulative offsets.
    fn contiguous_kv(&self) -> (Tensor, Tensor, Vec<usize>, Vec<usize>) {
        let t_k: usize = self.seqs.iter().map(|s| s.kv_len).sum();
        let k: Vec<f32> = self.seqs.iter().flat_map(|s| s.k.clone()).collect();
        let v: Vec<f32> = self.seqs.iter().flat_map(|s| s.v.clone()).collect();
        let mut cu_q = vec![0];
        let mut cu_k = vec![0];
        for s in &self.seqs {
            cu_q.push(cu_q.last().unwrap() + s.q_len);
            cu_k.push(cu_k.last().unwrap() + s.kv_len);
        }
        let shape = [t_k, self.h_kv, self.d];
        (cpu(k, &shape), cpu(v, &shape), cu_q, cu_k)
    }

    /// The naive low-precision attention (see the file comment), `[t, h, d]`.
    fn naive(&self) -> Vec<f32> {
        self.naive_rows(|_| true)
    }

    /// The same for the query rows `j` (within their sequence) that `keep(j, q_len)` selects.
    fn naive_rows(&self, keep: impl Fn((usize, usize)) -> bool) -> Vec<f32> {
        let (h, h_kv, d) = (self.h, self.h_kv, self.d);
        let mut out = Vec::new();
        for s in &self.seqs {
            for j in (0..s.q_len).filter(|&j| keep((j, s.q_len))) {
                let seen = if self.causal {
                    s.kv_len - s.q_len + j + 1
                } else {
                    s.kv_len
                };
                for head in 0..h {
                    let kvh = head / (h / h_kv);
                    let qv = &s.q[(j * h + head) * d..][..d];
                    let row = |p: usize| (p * h_kv + kvh) * d..(p * h_kv + kvh + 1) * d;
                    let scores: Vec<f32> = (0..seen)
                        .map(|p| {
                            let k = &s.k[row(p)];
                            qv.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * self.scale
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    let mut o = vec![0.0f32; d];
                    for (p, &w) in e.iter().enumerate() {
                        let w = round_to(self.dtype, w / sum);
                        for (o, v) in o.iter_mut().zip(&s.v[row(p)]) {
                            *o += w * v;
                        }
                    }
                    out.extend(o.into_iter().map(|x| round_to(self.dtype, x)));
                }
            }
        }
        out
    }
}

/// Checks a GPU output against the f32 reference with the tolerance of the file comment; returns it.
fn check(
    what: &str,
    gpu: &Tensor,
    reference: &[f32],
    naive: &[f32],
    dtype: DType,
) -> Result<f32, String> {
    if gpu.device() != GPU {
        return Err(format!("{what}: the result left the GPU"));
    }
    check_values(
        what,
        &gpu.to_f32_vec().map_err(|e| e.to_string())?,
        reference,
        naive,
        dtype,
    )
}

fn check_values(
    what: &str,
    g: &[f32],
    reference: &[f32],
    naive: &[f32],
    dtype: DType,
) -> Result<f32, String> {
    if g.len() != reference.len() || naive.len() != reference.len() {
        return Err(format!(
            "{what}: {} outputs, reference {}, naive {}",
            g.len(),
            reference.len(),
            naive.len()
        ));
    }
    let naive_err = naive
        .iter()
        .zip(reference)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let tol = (2.0 * naive_err)
        .max(unit_roundoff(dtype) * scale)
        .max(1e-6);
    for (i, (a, b)) in g.iter().zip(reference).enumerate() {
        if !a.is_finite() {
            return Err(format!("{what} ({dtype}): element {i} is {a} (unwritten?)"));
        }
        if (a - b).abs() > tol {
            return Err(format!(
                "{what} ({dtype}) [{i}]: gpu {a} cpu {b}, |diff| {} > tol {tol} (naive err {naive_err})",
                (a - b).abs()
            ));
        }
    }
    Ok(tol)
}

/// The tolerance rule itself, on the CPU (runs without a GPU): the naive low-precision result passes,
/// and one key too few (a causal off-by-one) fails at the lengths the random cases use.
#[test]
fn the_tolerance_accepts_low_precision_rounding_and_rejects_a_missing_key() {
    for (dtype, n) in [(DType::F16, 150usize), (DType::BF16, 40)] {
        let p = Problem::random(3, 2, 4, 64, dtype, false, &[(5, n)]);
        let (k, v, cu_q, cu_k) = p.contiguous_kv();
        let want = flash_attention(&p.q(), &k, &v, &cu_q, &cu_k, false, p.scale)
            .unwrap()
            .to_f32_vec()
            .unwrap();
        let naive = p.naive();
        check_values("naive", &naive, &want, &naive, dtype).unwrap();
        // Queries with one key (and value) fewer.
        let mut short = Problem::random(3, 2, 4, 64, dtype, false, &[(5, n)]);
        let row = p.h_kv * p.d;
        short.seqs[0].k.truncate((n - 1) * row);
        short.seqs[0].v.truncate((n - 1) * row);
        short.seqs[0].kv_len = n - 1;
        let wrong = short.naive();
        assert!(
            check_values("one key short", &wrong, &want, &naive, dtype).is_err(),
            "{dtype}: a missing key passes the tolerance"
        );
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn half_dtype(bf16: bool) -> DType {
    if bf16 {
        DType::BF16
    } else {
        DType::F16
    }
}

/// Runs `flash_attention` on the GPU and on the CPU for `p` (keys contiguous) and compares.
fn check_flash(p: &Problem, what: &str) -> Result<(), String> {
    let q = p.q();
    let (k, v, cu_q, cu_k) = p.contiguous_kv();
    let want =
        flash_attention(&q, &k, &v, &cu_q, &cu_k, p.causal, p.scale).map_err(|e| e.to_string())?;
    let got = flash_attention(
        &on_gpu(&q, p.dtype),
        &on_gpu(&k, p.dtype),
        &on_gpu(&v, p.dtype),
        &cu_q,
        &cu_k,
        p.causal,
        p.scale,
    )
    .map_err(|e| e.to_string())?;
    check(what, &got, &want.to_f32_vec().unwrap(), &p.naive(), p.dtype).map(|_| ())
}

#[test]
fn flash_attention_matches_the_cpu_on_random_varlen_batches() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let strategy = (
        prop::sample::select(vec![1usize, 5, 7, 8]),
        1usize..=2,
        prop::sample::select(vec![64usize, 128]),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((1usize..=150, 0usize..=150), 1..=3),
        any::<u64>(),
    );
    runner(40)
        .run(&strategy, |(group, h_kv, d, bf16, causal, lens, seed)| {
            // Causal: the queries are the last q_len of q_len + extra keys; otherwise any key count.
            let lens: Vec<(usize, usize)> = lens
                .iter()
                .map(|&(q_len, extra)| {
                    if causal {
                        (q_len, q_len + extra % 41)
                    } else {
                        (q_len, extra.max(1))
                    }
                })
                .collect();
            let p = Problem::random(seed, h_kv, group, d, half_dtype(bf16), causal, &lens);
            let what = format!("flash g{group} h_kv{h_kv} d{d} causal {causal} lens {lens:?}");
            check_flash(&p, &what).map_err(TestCaseError::fail)
        })
        .unwrap();
}

/// The flash kernel with each CTA tile forced, for `p` (keys contiguous): each against the CPU, and the
/// two against each other bit for bit (a row is computed the same way whichever warp holds it, so the
/// launcher's choice of tile never changes a result).
fn check_flash_tiles(p: &Problem, what: &str) -> Result<(), String> {
    let gpu = gpu_for_tests().ok_or("no GPU")?;
    let q = p.q();
    let (k, v, cu_q, cu_k) = p.contiguous_kv();
    let want =
        flash_attention(&q, &k, &v, &cu_q, &cu_k, p.causal, p.scale).map_err(|e| e.to_string())?;
    let want = want.to_f32_vec().unwrap();
    let naive = p.naive();
    let seqs: Vec<SeqRows> = (0..p.seqs.len())
        .map(|i| SeqRows {
            q_start: cu_q[i],
            q_len: cu_q[i + 1] - cu_q[i],
            k_start: cu_k[i],
            k_len: cu_k[i + 1] - cu_k[i],
        })
        .collect();
    let batch = AttnBatch::contiguous(&gpu, &seqs).map_err(|e| e.to_string())?;
    let (q, k, v) = (
        on_gpu(&q, p.dtype),
        on_gpu(&k, p.dtype),
        on_gpu(&v, p.dtype),
    );
    let mut bits = Vec::new();
    for tile in [gpu_attn::FlashTile::Rows64, gpu_attn::FlashTile::Rows128] {
        let mut out =
            GpuBuffer::output(&gpu, p.dtype, q.elem_count()).map_err(|e| e.to_string())?;
        let (h_kv, causal, scale) = (p.h_kv, p.causal, p.scale);
        gpu_attn::flash_attention_tile_into(
            &q, &k, &v, h_kv, &batch, causal, scale, tile, &mut out,
        )
        .map_err(|e| e.to_string())?;
        let got = Tensor::from_gpu_buffer(out, q.shape()).map_err(|e| e.to_string())?;
        check(&format!("{what} {tile:?}"), &got, &want, &naive, p.dtype)?;
        bits.push(got.to_f32_vec().map_err(|e| e.to_string())?);
    }
    if let Some(i) = (0..bits[0].len()).find(|&i| bits[0][i].to_bits() != bits[1][i].to_bits()) {
        return Err(format!(
            "{what}: element {i} is {} with 64-row CTAs and {} with 128-row CTAs",
            bits[0][i], bits[1][i]
        ));
    }
    Ok(())
}

#[test]
fn both_flash_tiles_match_the_cpu_and_each_other_on_random_varlen_batches() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let strategy = (
        prop::sample::select(vec![1usize, 5, 8]),
        prop::sample::select(vec![64usize, 128]),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((1usize..=300, 0usize..=300), 1..=3),
        any::<u64>(),
    );
    runner(16)
        .run(&strategy, |(group, d, bf16, causal, lens, seed)| {
            let lens: Vec<(usize, usize)> = lens
                .iter()
                .map(|&(q_len, extra)| {
                    if causal {
                        (q_len, q_len + extra % 70)
                    } else {
                        (q_len, extra.max(1))
                    }
                })
                .collect();
            let p = Problem::random(seed, 1, group, d, half_dtype(bf16), causal, &lens);
            let what = format!("flash g{group} d{d} causal {causal} lens {lens:?}");
            check_flash_tiles(&p, &what).map_err(TestCaseError::fail)
        })
        .unwrap();
}

#[test]
fn both_flash_tiles_handle_the_edges_of_their_rows() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    // Lengths at and around 64 and 128 query rows (one CTA of either tile, one more row), and the
    // diagonal of a causal 128-row CTA crossing its key tiles.
    let lens = [(1, 1), (127, 127), (128, 128), (129, 130), (200, 256)];
    for (i, &dtype) in [DType::F16, DType::BF16].iter().enumerate() {
        for d in [64, 128] {
            for causal in [true, false] {
                let p = Problem::random(20 + i as u64, 1, 5, d, dtype, causal, &lens);
                check_flash_tiles(&p, &format!("flash edges {dtype:?} d{d} causal {causal}"))
                    .unwrap();
            }
        }
    }
}

#[test]
fn flash_attention_handles_tile_edges_and_long_sequences() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    // Lengths at and around the 64-row / 64-key tiles, and one sequence longer than a CTA's rows by far.
    let lens = [(1, 1), (63, 63), (64, 64), (65, 65), (128, 129), (700, 700)];
    for (i, &dtype) in [DType::F16, DType::BF16].iter().enumerate() {
        for d in [64, 128] {
            for causal in [true, false] {
                let p = Problem::random(10 + i as u64, 2, 7, d, dtype, causal, &lens);
                check_flash(&p, &format!("flash edges d{d} causal {causal}")).unwrap();
            }
        }
    }
}

/// A paged cache holding every sequence of `p`, with tables that interleave (each sequence takes one
/// block per round), so no table is contiguous; returns the CPU and GPU caches and the tables.
fn paged_caches(p: &Problem, block_size: usize) -> (PagedKvCache, PagedKvCache, Vec<BlockTable>) {
    let blocks: usize = p.seqs.iter().map(|s| s.kv_len.div_ceil(block_size)).sum();
    let config = KvCacheConfig {
        layers: 1,
        kv_heads: p.h_kv,
        head_dim: p.d,
        block_size,
        num_blocks: blocks + 1,
    };
    let mut cpu_cache = PagedKvCache::new(config);
    let mut gpu_cache = PagedKvCache::new_on(config, GPU, p.dtype).unwrap();
    let mut tables: Vec<BlockTable> = p.seqs.iter().map(|_| BlockTable::new()).collect();
    let mut round = 1;
    while tables
        .iter()
        .zip(&p.seqs)
        .any(|(t, s)| t.blocks().len() * block_size < s.kv_len)
    {
        for (t, s) in tables.iter_mut().zip(&p.seqs) {
            let len = (round * block_size).min(s.kv_len);
            // Both pools hand out the same block numbers for the same sequence of reservations.
            gpu_cache.reserve(&mut t.clone(), len).unwrap();
            cpu_cache.reserve(t, len).unwrap();
        }
        round += 1;
    }
    let stride = p.h_kv * p.d;
    for (t, s) in tables.iter().zip(&p.seqs) {
        let slots = cpu_cache.slots(t, 0, s.kv_len).unwrap();
        let k = cpu(s.k.clone(), &[s.kv_len, stride]);
        let v = cpu(s.v.clone(), &[s.kv_len, stride]);
        cpu_cache.write_rows(0, &k, &v, &slots).unwrap();
        gpu_cache
            .write_rows(0, &on_gpu(&k, p.dtype), &on_gpu(&v, p.dtype), &slots)
            .unwrap();
    }
    (cpu_cache, gpu_cache, tables)
}

fn attn_seqs<'a>(p: &Problem, tables: &'a [BlockTable]) -> Vec<AttnSeq<'a>> {
    let mut q_start = 0;
    p.seqs
        .iter()
        .zip(tables)
        .map(|(s, t)| {
            let a = AttnSeq {
                blocks: t.blocks(),
                q_start,
                q_len: s.q_len,
                kv_len: s.kv_len,
            };
            q_start += s.q_len;
            a
        })
        .collect()
}

#[test]
fn paged_prefill_chunks_and_decode_steps_match_the_cpu_over_interleaved_blocks() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let strategy = (
        prop::sample::select(vec![1usize, 5, 7, 8]),
        1usize..=2,
        prop::sample::select(vec![64usize, 128]),
        any::<bool>(),
        prop::sample::select(vec![5usize, 16, 64]),
        any::<bool>(),
        prop::collection::vec((1usize..=500, 1usize..=120), 1..=4),
        any::<u64>(),
    );
    runner(32)
        .run(
            &strategy,
            |(group, h_kv, d, bf16, block_size, decode, lens, seed)| {
                // Decode: one query row per sequence (the split-KV kernel). Otherwise a prefill chunk of
                // up to 120 rows after the cached prefix (the flash kernel reading the cache).
                let lens: Vec<(usize, usize)> = lens
                    .iter()
                    .map(|&(kv_len, q)| (if decode { 1 } else { q.min(kv_len) }, kv_len))
                    .collect();
                let p = Problem::random(seed, h_kv, group, d, half_dtype(bf16), true, &lens);
                let (cpu_cache, gpu_cache, tables) = paged_caches(&p, block_size);
                let seqs = attn_seqs(&p, &tables);
                let q = p.q();
                let want = paged_attention(&q, &cpu_cache, 0, &seqs, p.scale).unwrap();
                let got =
                    paged_attention(&on_gpu(&q, p.dtype), &gpu_cache, 0, &seqs, p.scale).unwrap();
                let what = format!(
                    "paged g{group} h_kv{h_kv} d{d} bs{block_size} decode {decode} (q_len, kv_len) {lens:?}"
                );
                check(
                    &what,
                    &got,
                    &want.to_f32_vec().unwrap(),
                    &p.naive(),
                    p.dtype,
                )
                .map(|_| ())
                .map_err(TestCaseError::fail)
            },
        )
        .unwrap();
}

#[test]
fn decode_equals_the_last_row_of_prefill_at_every_split_count() {
    let Some(gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    // Up to 5000 keys: from one tile and one split to dozens of splits merged by the combine kernel (on the
    // CPU emulator up to 1000, already split several times).
    let lens: &[usize] = if gpu.is_cpu_emulator() {
        &[1, 2, 63, 64, 65, 129, 1000]
    } else {
        &[1, 2, 63, 64, 65, 129, 1000, 5000]
    };
    for (i, &n) in lens.iter().enumerate() {
        for (dtype, d, group) in [
            (DType::F16, 128, 8),
            (DType::BF16, 64, 7),
            (DType::BF16, 128, 5),
        ] {
            let p = Problem::random(100 + i as u64, 2, group, d, dtype, true, &[(n, n)]);
            let (cpu_cache, gpu_cache, tables) = paged_caches(&p, 16);
            let prefill_seqs = attn_seqs(&p, &tables);
            let q = p.q();
            let prefill =
                paged_attention(&on_gpu(&q, dtype), &gpu_cache, 0, &prefill_seqs, p.scale).unwrap();
            // The last query row alone, as a decode step.
            let (h, dd) = (p.h, p.d);
            let last_q = cpu(p.seqs[0].q[(n - 1) * h * dd..].to_vec(), &[1, h, dd]);
            let decode_seqs = [AttnSeq {
                blocks: tables[0].blocks(),
                q_start: 0,
                q_len: 1,
                kv_len: n,
            }];
            let decode = paged_attention(
                &on_gpu(&last_q, dtype),
                &gpu_cache,
                0,
                &decode_seqs,
                p.scale,
            )
            .unwrap();
            let want = paged_attention(&last_q, &cpu_cache, 0, &decode_seqs, p.scale)
                .unwrap()
                .to_f32_vec()
                .unwrap();
            let naive_last = &p.naive_rows(|(j, q_len)| j + 1 == q_len);
            let what = format!("decode n{n} d{d} g{group}");
            let tol = check(&what, &decode, &want, naive_last, dtype).unwrap();
            let last_row = prefill.to_f32_vec().unwrap()[(n - 1) * h * dd..].to_vec();
            let last_row = on_gpu(&cpu(last_row, &[1, h, dd]), dtype);
            check(
                &format!("prefill last row n{n}"),
                &last_row,
                &want,
                naive_last,
                dtype,
            )
            .unwrap();
            // Both within tol of the reference, so within 2·tol of each other.
            let (a, b) = (decode.to_f32_vec().unwrap(), last_row.to_f32_vec().unwrap());
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 2.0 * tol, "{what}: decode {x} prefill {y}");
            }
            // The plan really splits the long contexts.
            let batch = AttnBatch::paged(&gpu, &decode_seqs, 16).unwrap();
            let mut plan = gpu_attn::DecodePlan::new(&gpu, &batch, h, p.h_kv, d).unwrap();
            if n >= 1000 {
                assert!(plan.splits > 1, "{what}: {} splits", plan.splits);
            }
            // One plan serves every layer of a step: its split counters are back at zero after each call, so
            // later calls combine too (into poisoned outputs), with the same bits.
            let (kc, vc) = gpu_cache.layer(0);
            let q_gpu = on_gpu(&last_q, dtype);
            let first = decode.to_f32_vec().unwrap();
            for call in 0..3 {
                let mut out = GpuBuffer::output(
                    &std::sync::Arc::clone(&q_gpu.gpu_buffer().unwrap().gpu),
                    dtype,
                    q_gpu.elem_count(),
                )
                .unwrap();
                gpu_attn::decode_attention_into(
                    &q_gpu, kc, vc, p.h_kv, &batch, &mut plan, p.scale, &mut out,
                )
                .unwrap();
                let again = Tensor::from_gpu_buffer(out, q_gpu.shape())
                    .unwrap()
                    .to_f32_vec()
                    .unwrap();
                assert!(
                    again
                        .iter()
                        .zip(&first)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}: call {call} with the same plan differs"
                );
            }
        }
    }
}

#[test]
fn causal_rows_do_not_depend_on_later_tokens() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    for (dtype, d) in [(DType::F16, 128), (DType::BF16, 64)] {
        let n = 200;
        let cut = 77; // rows 0..=cut must not see any change made after position cut
        let p = Problem::random(7, 2, 5, d, dtype, true, &[(n, n)]);
        let mut later = Problem::random(7, 2, 5, d, dtype, true, &[(n, n)]);
        let (kv_row, q_row) = (p.h_kv * d, p.h * d);
        let s = &mut later.seqs[0];
        s.k[(cut + 1) * kv_row..].iter_mut().for_each(|x| *x = -*x);
        s.v[(cut + 1) * kv_row..]
            .iter_mut()
            .for_each(|x| *x = round_to(dtype, *x * 0.5 + 0.25));
        s.q[(cut + 1) * q_row..].iter_mut().for_each(|x| *x = -*x);
        let run_flash = |p: &Problem| {
            let (k, v, cu_q, cu_k) = p.contiguous_kv();
            flash_attention(
                &on_gpu(&p.q(), dtype),
                &on_gpu(&k, dtype),
                &on_gpu(&v, dtype),
                &cu_q,
                &cu_k,
                true,
                p.scale,
            )
            .unwrap()
            .to_f32_vec()
            .unwrap()
        };
        let run_paged = |p: &Problem| {
            let (_, gpu_cache, tables) = paged_caches(p, 16);
            let seqs = attn_seqs(p, &tables);
            paged_attention(&on_gpu(&p.q(), dtype), &gpu_cache, 0, &seqs, p.scale)
                .unwrap()
                .to_f32_vec()
                .unwrap()
        };
        for (name, a, b) in [
            ("flash", run_flash(&p), run_flash(&later)),
            ("paged", run_paged(&p), run_paged(&later)),
        ] {
            let keep = (cut + 1) * q_row;
            assert_eq!(a[..keep], b[..keep], "{name} {dtype}: an early row changed");
            assert_ne!(
                a[keep..],
                b[keep..],
                "{name} {dtype}: later rows did not change"
            );
        }
    }
}

#[test]
fn bidirectional_attention_on_the_gpu_matches_the_cpu() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    // InternViT-like: every token of a tile sees the whole tile; 3 heads, tiles of 67 and 257 tokens.
    for (i, &(b, s, d, dtype)) in [
        (2usize, 67usize, 64usize, DType::F16),
        (3, 257, 128, DType::BF16),
        (1, 257, 128, DType::F16),
    ]
    .iter()
    .enumerate()
    {
        let h = 3;
        let p = Problem::random(200 + i as u64, h, 1, d, dtype, false, &vec![(s, s); b]);
        let (k, v, _, _) = p.contiguous_kv();
        let shape = [b, s, h, d];
        let q4 = p.q().reshape(&shape).unwrap();
        let (k4, v4) = (k.reshape(&shape).unwrap(), v.reshape(&shape).unwrap());
        let want = bidirectional_attention(&q4, &k4, &v4, p.scale).unwrap();
        let got = bidirectional_attention(
            &on_gpu(&q4, dtype),
            &on_gpu(&k4, dtype),
            &on_gpu(&v4, dtype),
            p.scale,
        )
        .unwrap();
        assert_eq!(got.shape(), &shape);
        check(
            &format!("bidirectional b{b} s{s} d{d}"),
            &got,
            &want.to_f32_vec().unwrap(),
            &p.naive(),
            dtype,
        )
        .unwrap();
    }
}

#[test]
fn other_head_dims_and_f32_take_the_straightforward_kernel_and_match() {
    // What the flash kernel does not take (head dims other than 64 and 128, as in the small test
    // checkpoints; f32) runs the one-warp-per-row kernel over the keys in memory, causal or not.
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let lens = [(1, 1), (5, 9), (40, 70)];
    let cases = [
        (16, DType::BF16),
        (40, DType::F16),
        (64, DType::F32),
        (200, DType::BF16),
    ];
    for (i, &(d, dtype)) in cases.iter().enumerate() {
        for causal in [true, false] {
            let p = Problem::random(60 + i as u64, 2, 3, d, dtype, causal, &lens);
            check_flash(&p, &format!("fallback d{d} causal {causal}")).unwrap();
        }
    }
    // Past what one warp holds: a clear error.
    let q = cpu(vec![0.0; 2 * 2 * 264], &[2, 2, 264]);
    let cu = [0usize, 2];
    let err = flash_attention(
        &on_gpu(&q, DType::F16),
        &on_gpu(&q, DType::F16),
        &on_gpu(&q, DType::F16),
        &cu,
        &cu,
        true,
        1.0,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("up to 256"), "{err}");
}

// ---- row kernels ----

fn ulp(dtype: DType) -> f32 {
    2.0 * unit_roundoff(dtype)
}

fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor, dtype: DType) {
    assert_eq!(gpu.device(), GPU, "{what}: result left the GPU");
    assert_eq!(gpu.shape(), cpu.shape(), "{what}: shape");
    let g = gpu.to_f32_vec().unwrap();
    let c = cpu.to_f32_vec().unwrap();
    let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
    let tol = if dtype == DType::F32 {
        1e-5 * scale
    } else {
        2.0 * ulp(dtype) * scale
    };
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        assert!(a.is_finite(), "{what} ({dtype}): element {i} is {a}");
        assert!(
            (a - b).abs() <= tol,
            "{what} ({dtype}) [{i}]: gpu {a} cpu {b} tol {tol}"
        );
    }
}

fn random_tensor(rng: &mut ChaCha8Rng, shape: &[usize], dtype: DType, scale: f32) -> Tensor {
    let n = shape.iter().product();
    cpu(random_vec(rng, n, scale, dtype), shape)
}

#[test]
fn add_rms_norm_layer_norm_gelu_and_scatter_match_the_cpu() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // 13 and 1001: the scalar path (rows not a multiple of 16 bytes); the others vectorized; 3200
        // (InternViT-6B) and 8192 (Qwen2.5-72B) take several vectors per thread, 8200 more than a block
        // holds in registers (the loops over the row).
        for &(rows, width) in &[
            (1usize, 13usize),
            (7, 64),
            (5, 1001),
            (33, 896),
            (4, 3200),
            (3, 8192),
            (2, 8200),
        ] {
            let x = random_tensor(&mut rng, &[rows, width], dtype, 3.0);
            let r = random_tensor(&mut rng, &[rows, width], dtype, 1.0);
            let w = random_tensor(&mut rng, &[width], dtype, 1.0);
            let bias = random_tensor(&mut rng, &[width], dtype, 0.5);

            // The GPU stores the sum in the dtype and normalizes what it stored: the CPU twin gets the
            // same rounded sum as input, so both normalize the same numbers.
            let mut x_gpu = on_gpu(&x, dtype);
            let y_gpu =
                add_rms_norm(&mut x_gpu, &on_gpu(&r, dtype), &on_gpu(&w, dtype), 1e-6).unwrap();
            let mut x_cpu = x.clone();
            let y_cpu = add_rms_norm(&mut x_cpu, &r, &w, 1e-6).unwrap();
            let x_sum = x_cpu.to_dtype(dtype).unwrap().to_f32().unwrap();
            assert_close("add_rms_norm (x)", &x_gpu, &x_sum, dtype);
            let y_rounded_sum = awq_kernels::ops::norm::rms_norm(&x_sum, &w, 1e-6).unwrap();
            assert_close("add_rms_norm (y)", &y_gpu, &y_rounded_sum, dtype);
            assert_close("add_rms_norm (y vs f32 sum)", &y_gpu, &y_cpu, dtype);

            assert_close(
                "layer_norm",
                &layer_norm(
                    &on_gpu(&x, dtype),
                    &on_gpu(&w, dtype),
                    &on_gpu(&bias, dtype),
                    1e-6,
                )
                .unwrap(),
                &layer_norm(&x, &w, &bias, 1e-6).unwrap(),
                dtype,
            );

            assert_close(
                "gelu",
                &gelu(&on_gpu(&x, dtype)).unwrap(),
                &gelu(&x).unwrap(),
                dtype,
            );

            let big = random_tensor(&mut rng, &[rows * 3 + 2, width], dtype, 1.0);
            let picked: Vec<usize> = (0..rows).map(|i| (i * 7 + 1) % (rows * 3 + 2)).collect();
            let mut dedup = picked.clone();
            dedup.sort();
            dedup.dedup();
            let src = random_tensor(&mut rng, &[dedup.len(), width], dtype, 2.0);
            let mut g = on_gpu(&big, dtype);
            scatter_rows(&mut g, &dedup, &on_gpu(&src, dtype)).unwrap();
            let mut c = big.clone();
            scatter_rows(&mut c, &dedup, &src).unwrap();
            assert_close("scatter_rows", &g, &c, dtype);
        }
        // GELU over a length that is not a multiple of the vector (the tail path) and a long one.
        for n in [1usize, 7, 4099, 1 << 20] {
            let x = random_tensor(&mut rng, &[n], dtype, 4.0);
            assert_close(
                "gelu (1-D)",
                &gelu(&on_gpu(&x, dtype)).unwrap(),
                &gelu(&x).unwrap(),
                dtype,
            );
        }
    }
}
