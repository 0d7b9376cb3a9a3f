//! Choosing the next token from logits: greedy, or sampling with temperature, top-k, top-p and a repetition
//! penalty, from a seeded generator so a run can be repeated. The processors run in transformers' order:
//! repetition penalty, temperature, top-k, top-p.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sampling settings. The defaults are greedy decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// > 1 discourages tokens already in the sequence (CTRL-style, as transformers applies it).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Checks the ranges; the message names the parameter.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |msg: &str| Err(crate::Error::Unsupported(msg.to_string()));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature must be a finite number >= 0");
        }
        if self.temperature > 0.0 && !(1.0 / self.temperature).is_finite() {
            // Dividing the logits by it would give infinities (and NaN for a zero logit).
            return bad("temperature must be 0 (greedy) or at least 1e-38");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty must be a finite number > 0");
        }
        Ok(())
    }
}

/// A sampler with its own random stream.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            params,
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token given the logits of the last position and the tokens so far (prompt included).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut logits: Vec<f32> = logits
            .iter()
            .map(|&v| if v.is_nan() { f32::NEG_INFINITY } else { v })
            .collect();
        apply_repetition_penalty(&mut logits, history, self.params.repetition_penalty);
        if self.params.temperature == 0.0 {
            return argmax(&logits) as u32;
        }
        let inv_t = 1.0 / self.params.temperature;
        logits.iter_mut().for_each(|v| *v *= inv_t);
        let r: f32 = self.rng.gen::<f32>();
        let (top_k, top_p) = (self.params.top_k, self.params.top_p);
        if top_k == 0 && top_p >= 1.0 {
            // Every token stays a candidate: no ranking needed, the inverse CDF in index order.
            return sample_all(&logits, r) as u32;
        }
        draw(&top_k_top_p_probs(&logits, top_k, top_p), r)
    }
}

impl Sampler {
    /// The token [`Sampler::sample`] would choose, from the candidates [`top_k_rows`] gave for this
    /// sequence (its top-k with its temperature): the same random draw, the same probabilities, the same
    /// token. Only for sampling settings with a temperature > 0, a top-k of 1..=[`TOP_K_ROWS_MAX`] and no
    /// repetition penalty ([`SamplingParams::ranks_on_device`]).
    pub fn sample_ranked(&mut self, ranked: &[(u32, f32)]) -> u32 {
        let r: f32 = self.rng.gen::<f32>();
        let ranked: Vec<(usize, f32)> = ranked.iter().map(|&(i, v)| (i as usize, v)).collect();
        draw(&ranked_probs(&ranked, self.params.top_p), r)
    }
}

impl SamplingParams {
    /// Whether the candidates can be ranked where the logits are ([`top_k_rows`] + [`Sampler::sample_ranked`]):
    /// a temperature > 0, a top-k of 1..=[`TOP_K_ROWS_MAX`], no repetition penalty.
    pub fn ranks_on_device(&self) -> bool {
        self.temperature > 0.0
            && (1.0 / self.temperature).is_finite()
            && (1..=TOP_K_ROWS_MAX).contains(&self.top_k)
            && self.repetition_penalty == 1.0
    }
}

/// The token of `probs` (most likely first) where the running sum first passes the uniform number `r`; the
/// last one when rounding leaves the sum just short of r.
fn draw(probs: &[(usize, f32)], r: f32) -> u32 {
    let mut acc = 0.0f32;
    for &(id, p) in probs {
        acc += p;
        if r < acc {
            return id as u32;
        }
    }
    probs.last().map(|&(id, _)| id as u32).unwrap_or(0)
}

/// A token drawn from softmax(`logits`) with the uniform number `r` in [0, 1): the first index whose
/// cumulative weight (in index order) passes r · total. O(vocab), one exponential per token.
fn sample_all(logits: &[f32], r: f32) -> usize {
    let max = max_of(logits);
    if !max.is_finite() {
        return argmax(logits);
    }
    let weights: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let total: f32 = weights.iter().sum();
    let target = r * total;
    let mut acc = 0.0f32;
    let mut last = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            acc += w;
            last = i;
            if target < acc {
                return i;
            }
        }
    }
    last
}

/// The greedy choice for each row of `logits` `[rows, vocab]` (any float dtype, CPU or GPU): the index of
/// the largest value, NaN counted as -inf, the first index on ties, exactly as [`Sampler::sample`] chooses
/// at temperature 0 without a repetition penalty. On a GPU only the indices come back to the host.
pub fn argmax_rows(logits: &crate::Tensor) -> crate::Result<Vec<u32>> {
    let &[rows, width] = logits.shape() else {
        return Err(crate::Error::shape(
            "argmax_rows",
            format!("logits must be [rows, vocab], got {:?}", logits.shape()),
        ));
    };
    #[cfg(feature = "cuda")]
    if logits.device() != crate::Device::Cpu {
        return crate::cuda::sampling::argmax_rows(logits, rows, width);
    }
    let values = logits.to_f32_vec()?;
    Ok((0..rows)
        .map(|r| {
            let row: Vec<f32> = values[r * width..(r + 1) * width]
                .iter()
                .map(|&v| if v.is_nan() { f32::NEG_INFINITY } else { v })
                .collect();
            argmax(&row) as u32
        })
        .collect())
}

impl SamplingParams {
    /// Whether the choice is the plain argmax (temperature 0, no repetition penalty): then
    /// [`argmax_rows`] gives it without the logits leaving the device.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature == 0.0 && self.repetition_penalty == 1.0
    }
}

/// Index of the largest value; the first one on ties (as `torch.argmax`).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: a seen token's logit is divided by the penalty when
/// positive and multiplied by it when negative.
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &id in history {
        if let Some(s) = seen.get_mut(id as usize) {
            if !*s {
                *s = true;
                let v = &mut logits[id as usize];
                *v = if *v > 0.0 { *v / penalty } else { *v * penalty };
            }
        }
    }
}

/// The kept tokens with renormalized probabilities, most likely first.
///
/// With top-k, the k best are selected in O(vocab) and only those are sorted. With top-p and no top-k,
/// the kept tokens are a prefix of the ranking: a growing number of the best (64, then 8x more) is ranked
/// until it holds the mass, so a peaked distribution costs O(vocab) and only a flat one approaches a full
/// sort (5 ms for a 150k vocabulary). The probabilities are then those of the softmax over the whole
/// vocabulary, summed in index order.
pub fn top_k_top_p_probs(logits: &[f32], top_k: usize, top_p: f32) -> Vec<(usize, f32)> {
    if logits.is_empty() {
        return Vec::new();
    }
    // A top-k (even one past the vocabulary) ranks its candidates and takes the softmax over them alone,
    // in rank order, the computation `Sampler::sample_ranked` repeats on device-ranked candidates.
    if top_k > 0 || top_p >= 1.0 {
        let ranked: Vec<(usize, f32)> = best(logits, top_k)
            .into_iter()
            .map(|i| (i, logits[i]))
            .collect();
        return ranked_probs(&ranked, top_p);
    }
    let max = max_of(logits);
    if !max.is_finite() {
        // Nothing finite to weigh (all -inf), or +inf logits whose weights would be NaN: the first best.
        return vec![(argmax(logits), 1.0)];
    }
    // Top-p over the whole vocabulary.
    let total: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
    let mut prefix = 64;
    loop {
        prefix = prefix.min(logits.len());
        let ranked = best(logits, prefix);
        let mut probs: Vec<(usize, f32)> = ranked
            .iter()
            .map(|&i| (i, (logits[i] - max).exp() / total))
            .collect();
        match top_p_count(&probs, top_p) {
            Some(keep) => probs.truncate(keep),
            None if prefix == logits.len() => {}
            None => {
                prefix *= 8;
                continue;
            }
        }
        renormalize(&mut probs);
        return probs;
    }
}

/// The largest value (NaN ignored), with eight independent running maxima so the pass is not one long
/// dependency chain.
fn max_of(values: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in m.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    rest.iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a })
}

/// The indices of the `k` largest logits (all if k is 0 or past the end), larger logit first, then smaller
/// index: a total order, so the selection and a full sort agree.
fn best(logits: &[f32], k: usize) -> Vec<usize> {
    let by_rank = |&a: &usize, &b: &usize| logits[b].total_cmp(&logits[a]).then(a.cmp(&b));
    let mut order: Vec<usize> = (0..logits.len()).collect();
    if k > 0 && k < order.len() {
        // Only the k best are needed: select them in O(vocab), then sort those k (a full sort of a
        // 150k-token vocabulary costs milliseconds per token).
        order.select_nth_unstable_by(k - 1, by_rank);
        order.truncate(k);
    }
    order.sort_unstable_by(by_rank);
    order
}

/// The probabilities of the `ranked` candidates (token, logit), best first: softmax over them only, summed in
/// that order, then the top-p cut. A first logit that is not finite (all -inf, or +inf) keeps only it.
fn ranked_probs(ranked: &[(usize, f32)], top_p: f32) -> Vec<(usize, f32)> {
    let Some(&(first, max)) = ranked.first() else {
        return Vec::new();
    };
    if !max.is_finite() {
        return vec![(first, 1.0)];
    }
    let mut probs: Vec<(usize, f32)> = ranked.iter().map(|&(i, v)| (i, (v - max).exp())).collect();
    renormalize(&mut probs);
    if top_p < 1.0 {
        let keep = top_p_count(&probs, top_p).unwrap_or(probs.len());
        probs.truncate(keep);
        renormalize(&mut probs);
    }
    probs
}

/// The most candidates [`top_k_rows`] returns per row (the device kernel's fixed width).
pub const TOP_K_ROWS_MAX: usize = 64;

/// For each row of `logits` `[rows, vocab]` (CPU or GPU, any float dtype): its `k[r]` best values after
/// the sampler's scaling, `(NaN ? -inf : v) · inv_temperature[r]` in f32, as (token, scaled value), larger
/// value first (IEEE total order), then smaller token: exactly the candidates [`Sampler::sample`] ranks for
/// a top-k of `k[r]` (at most [`TOP_K_ROWS_MAX`]). On a GPU only these pairs reach the host
/// ([`Sampler::sample_ranked`] then chooses as `sample` would).
pub fn top_k_rows(
    logits: &crate::Tensor,
    inv_temperature: &[f32],
    k: &[usize],
) -> crate::Result<Vec<Vec<(u32, f32)>>> {
    let &[rows, width] = logits.shape() else {
        return Err(crate::Error::shape(
            "top_k_rows",
            format!("logits must be [rows, vocab], got {:?}", logits.shape()),
        ));
    };
    if inv_temperature.len() != rows || k.len() != rows {
        return Err(crate::Error::shape(
            "top_k_rows",
            format!(
                "{rows} rows but {} temperatures and {} k",
                inv_temperature.len(),
                k.len()
            ),
        ));
    }
    if let Some(&bad) = k.iter().find(|&&v| v == 0 || v > TOP_K_ROWS_MAX) {
        return Err(crate::Error::Unsupported(format!(
            "top_k_rows: k = {bad}, expected 1..={TOP_K_ROWS_MAX}"
        )));
    }
    #[cfg(feature = "cuda")]
    if logits.device() != crate::Device::Cpu {
        return crate::cuda::sampling::top_k_rows(logits, rows, width, inv_temperature, k);
    }
    let values = logits.to_f32_vec()?;
    Ok((0..rows)
        .map(|r| {
            let scaled: Vec<f32> = values[r * width..(r + 1) * width]
                .iter()
                .map(|&v| if v.is_nan() { f32::NEG_INFINITY } else { v } * inv_temperature[r])
                .collect();
            best(&scaled, k[r].min(width))
                .into_iter()
                .map(|i| (i as u32, scaled[i]))
                .collect()
        })
        .collect())
}

/// How many of the ranked tokens top-p keeps: tokens are kept until the mass before them reaches top_p
/// (the first is always kept). None when these tokens do not reach it.
fn top_p_count(probs: &[(usize, f32)], top_p: f32) -> Option<usize> {
    let mut acc = 0.0;
    for (keep, &(_, p)) in probs.iter().enumerate() {
        if acc >= top_p {
            return Some(keep.max(1));
        }
        acc += p;
    }
    (acc >= top_p).then_some(probs.len())
}

fn renormalize(probs: &mut [(usize, f32)]) {
    let total: f32 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selecting_the_top_k_gives_the_order_and_probabilities_of_a_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for vocab in [1usize, 7, 1000, 151_674] {
            // Coarse values: many ties, which the index order must break as the full sort does.
            let logits: Vec<f32> = (0..vocab)
                .map(|_| (rng.gen_range(-6.0f32..6.0) * 2.0).round() / 2.0)
                .collect();
            let mut full: Vec<usize> = (0..vocab).collect();
            full.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            for top_k in [1usize, 40, 64, vocab] {
                let got = top_k_top_p_probs(&logits, top_k, 1.0);
                let ids: Vec<usize> = got.iter().map(|p| p.0).collect();
                assert_eq!(ids, full[..top_k.min(vocab)], "vocab {vocab} top_k {top_k}");
                // The same exponentials, summed in the same order: the same probabilities, bit for bit.
                let kept = &full[..top_k.min(vocab)];
                let e: Vec<f32> = kept
                    .iter()
                    .map(|&i| (logits[i] - logits[kept[0]]).exp())
                    .collect();
                let total: f32 = e.iter().sum();
                let want: Vec<f32> = e.iter().map(|v| v / total).collect();
                let probs: Vec<f32> = got.iter().map(|p| p.1).collect();
                assert_eq!(probs, want);
            }
        }
    }

    /// The definition, spelled out: rank the whole vocabulary, softmax over it (normalizer summed in index
    /// order, in f32 as the sampler does), keep tokens until the mass before them reaches top_p, renormalize.
    fn top_p_by_full_sort(logits: &[f32], top_p: f32) -> Vec<(usize, f32)> {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let max = logits[order[0]];
        let total: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
        let (mut acc, mut kept) = (0.0f32, Vec::new());
        for &i in &order {
            if acc >= top_p {
                break;
            }
            let p = (logits[i] - max).exp() / total;
            acc += p;
            kept.push((i, p));
        }
        let mass: f32 = kept.iter().map(|p| p.1).sum();
        kept.iter().map(|&(i, p)| (i, p / mass)).collect()
    }

    #[test]
    fn top_p_without_top_k_keeps_what_a_full_sort_keeps() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        // Peaked rows (the ranked prefix of 64 suffices), flat rows (it grows to the whole vocabulary),
        // coarse rows with many ties, a row with -inf entries: the same tokens and probabilities, bit for bit.
        for case in 0..24 {
            let vocab = [10usize, 1000, 20_000][case % 3];
            let logits: Vec<f32> = (0..vocab)
                .map(|i| match case / 3 % 4 {
                    0 => rng.gen_range(-4.0f32..4.0) + if i % 97 == 5 { 12.0 } else { 0.0 },
                    1 => rng.gen_range(-0.05f32..0.05),
                    2 => (rng.gen_range(-6.0f32..6.0) * 2.0).round() / 2.0,
                    _ => {
                        if i % 3 == 0 {
                            f32::NEG_INFINITY
                        } else {
                            rng.gen_range(-2.0f32..2.0)
                        }
                    }
                })
                .collect();
            for top_p in [0.1f32, 0.5, 0.9, 0.999] {
                let got = top_k_top_p_probs(&logits, 0, top_p);
                assert_eq!(
                    got,
                    top_p_by_full_sort(&logits, top_p),
                    "case {case} top_p {top_p}"
                );
                let sum: f32 = got.iter().map(|p| p.1).sum();
                assert!((sum - 1.0).abs() < 2e-3, "{sum}"); // f32 sums of up to 20k terms
            }
        }
        // The peaked case really keeps few tokens, the flat one nearly all.
        let flat: Vec<f32> = (0..1000).map(|i| (i % 7) as f32 * 1e-3).collect();
        assert!(top_k_top_p_probs(&flat, 0, 0.9).len() > 850);
    }

    #[test]
    fn sampling_from_the_ranked_candidates_chooses_what_sampling_the_row_chooses() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        for case in 0..40 {
            let vocab = [5usize, 300, 5000][case % 3];
            let coarse = case % 2 == 0;
            let row: Vec<f32> = (0..vocab)
                .map(|i| {
                    let v = rng.gen_range(-5.0f32..5.0);
                    match i % 53 {
                        7 => f32::NAN,
                        11 => f32::NEG_INFINITY,
                        _ if coarse => (v * 2.0).round() / 2.0, // ties
                        _ => v,
                    }
                })
                .collect();
            let params = SamplingParams {
                temperature: [0.3f32, 0.7, 1.0, 1.9][case % 4],
                top_k: [1usize, 7, 40, 64][case / 4 % 4],
                top_p: [1.0f32, 0.9, 0.5][case % 3],
                seed: case as u64,
                ..Default::default()
            };
            assert!(params.ranks_on_device());
            let logits = crate::Tensor::from_vec(row.clone(), &[1, vocab]).unwrap();
            let ranked =
                &top_k_rows(&logits, &[1.0 / params.temperature], &[params.top_k]).unwrap()[0];
            assert_eq!(ranked.len(), params.top_k.min(vocab));
            let (mut whole, mut candidates) = (Sampler::new(params), Sampler::new(params));
            for _ in 0..50 {
                assert_eq!(
                    whole.sample(&row, &[]),
                    candidates.sample_ranked(ranked),
                    "case {case}"
                );
            }
        }
        let bad = crate::Tensor::from_vec(vec![0.0f32; 4], &[2, 2]).unwrap();
        assert!(top_k_rows(&bad, &[1.0], &[1, 1]).is_err());
        assert!(top_k_rows(&bad, &[1.0, 1.0], &[1, 65]).is_err());
        assert!(top_k_rows(&bad, &[1.0, 1.0], &[0, 1]).is_err());
    }

    #[test]
    fn rows_without_finite_logits_fall_back_to_the_first_best() {
        let all_neg = [f32::NEG_INFINITY; 5];
        assert_eq!(top_k_top_p_probs(&all_neg, 0, 0.9), vec![(0, 1.0)]);
        let pos_inf = [1.0, f32::INFINITY, 2.0, f32::INFINITY];
        assert_eq!(top_k_top_p_probs(&pos_inf, 2, 1.0), vec![(1, 1.0)]);
        let params = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        assert_eq!(Sampler::new(params).sample(&all_neg, &[]), 0);
        assert_eq!(Sampler::new(params).sample(&pos_inf, &[]), 1);
    }

    #[test]
    fn temperature_only_sampling_follows_the_softmax() {
        // Four tokens with p = 0.1, 0.2, 0.3, 0.4 at temperature 1; at temperature 0.5 they become
        // proportional to p².
        let logits: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
        for (t, want) in [
            (1.0f32, [0.1, 0.2, 0.3, 0.4]),
            (0.5, [1.0 / 30.0, 4.0 / 30.0, 9.0 / 30.0, 16.0 / 30.0]),
        ] {
            let mut s = Sampler::new(SamplingParams {
                temperature: t,
                seed: 3,
                ..Default::default()
            });
            let mut counts = [0usize; 4];
            let n = 20_000;
            for _ in 0..n {
                counts[s.sample(&logits, &[]) as usize] += 1;
            }
            for (c, w) in counts.iter().zip(want) {
                let f = *c as f64 / n as f64;
                // 4.5 standard deviations of a binomial frequency.
                assert!(
                    (f - w).abs() < 4.5 * (w * (1.0 - w) / n as f64).sqrt(),
                    "t {t}: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn argmax_rows_chooses_as_the_greedy_sampler_does() {
        let rows = [
            vec![0.5, 2.0, 2.0, -1.0],                 // tie: the first
            vec![f32::NAN, -3.0, -2.0, -2.5],          // NaN counts as -inf
            vec![f32::NEG_INFINITY; 4],                // nothing finite: 0
            vec![-1.0, f32::NAN, f32::INFINITY, 1e30], // +inf wins
        ];
        let flat: Vec<f32> = rows.concat();
        let logits = crate::Tensor::from_vec(flat, &[4, 4]).unwrap();
        let got = argmax_rows(&logits).unwrap();
        assert_eq!(got, vec![1, 2, 0, 2]);
        for (row, &g) in rows.iter().zip(&got) {
            let mut sampler = Sampler::new(SamplingParams::default());
            assert_eq!(sampler.sample(row, &[]), g);
        }
        let bf16 = logits.to_dtype(crate::DType::BF16).unwrap();
        assert_eq!(argmax_rows(&bf16).unwrap(), got);
        assert!(argmax_rows(&crate::Tensor::from_vec(vec![1.0f32; 4], &[4]).unwrap()).is_err());
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_ignores_nan() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, f32::NAN], &[]), 1);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut logits = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut logits, &[0, 1, 1], 2.0);
        assert_eq!(logits, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_temperature() {
        let params = SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: 7,
            ..Default::default()
        };
        let mut s = Sampler::new(params);
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 0.5, 0.4], &[]), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_the_mass() {
        // probabilities 0.5, 0.3, 0.2 (logits are their logs)
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let kept = top_k_top_p_probs(&logits, 0, 0.7);
        assert_eq!(kept.len(), 2);
        assert!((kept[0].1 - 0.625).abs() < 1e-6 && (kept[1].1 - 0.375).abs() < 1e-6);
    }

    #[test]
    fn the_same_seed_gives_the_same_samples_and_frequencies_follow_the_probabilities() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let params = SamplingParams {
            temperature: 1.0,
            seed: 42,
            ..Default::default()
        };
        let draw = |n: usize| {
            let mut s = Sampler::new(params);
            (0..n).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        let a = draw(4000);
        assert_eq!(a, draw(4000));
        let ones = a.iter().filter(|&&t| t == 1).count() as f32 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn out_of_range_parameters_are_rejected() {
        let p = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(p.validate().is_err());
        let p = SamplingParams {
            temperature: -1.0,
            ..Default::default()
        };
        assert!(p.validate().is_err());
        let p = SamplingParams {
            temperature: 1e-40,
            ..Default::default()
        };
        assert!(p.validate().is_err());
    }
}
