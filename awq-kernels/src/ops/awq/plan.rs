//! Launch geometry of the AWQ streaming kernels (`awq_stream_*`, `awq_pipe_*` in `kernels/awq_gemm.cu`): how
//! the (strip, group) work of one linear is cut into column blocks, k-splits and per-warp runs of groups.
//! Pure arithmetic, tested here; the launchers are in `cuda.rs`, the choice between plans in `tune.rs`.

/// Values of k per chunk (one mma k-step).
pub const CHUNK_K: usize = 16;
/// Upper bound on the split-K factor (the kernel sums up to 16 partials with all loads in flight).
pub const MAX_SPLITS: usize = 16;
/// Rows one block of the streaming kernels computes at most (4 m-tiles of 16).
pub const ROWS_PER_BLOCK: usize = 64;

/// How a plan trades the number of blocks against the work of each warp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlanShape {
    /// About four blocks per SM (two resident at a time, so the grid fills the GPU about twice) with as few
    /// k-splits as that allows: short warps, an uneven last wave hidden by the other blocks' memory traffic.
    /// The measured default (`PERF.md`).
    Spread,
    /// The k-split count whose grid fills the resident block slots most evenly (the last wave as full as
    /// possible), the fewest blocks among near-equals: longer-lived warps with several groups each, so a
    /// load pipeline reaches a steady state (`PERF-NOTES.md`, the cp.async kernel's fallback plan).
    Balanced,
}

/// Launch geometry of the streaming kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamPlan {
    /// m-tiles of 16 rows (1, 2 or 4).
    pub mt: usize,
    /// Strips per block (1 or 2); the block's 8 warps are `sw` strips × `8 / sw` k-lanes.
    pub sw: usize,
    /// Column blocks = ceil(strips / sw).
    pub cols: usize,
    /// Row blocks of 64 rows (1 up to m = 64); grid x = cols · row_blocks, the row blocks of a column block
    /// side by side.
    pub row_blocks: usize,
    /// k-splits (grid y).
    pub splits: usize,
    /// Groups per warp.
    pub gpw: usize,
    /// Chunks (16 values of k) per load batch of the register kernel: the largest of 8, 4, 2, 1 that divides
    /// group / 16 (at most 2 for `mt` = 4).
    pub cb: usize,
}

impl StreamPlan {
    /// Blocks in the grid.
    pub fn blocks(&self) -> usize {
        self.cols * self.row_blocks * self.splits
    }

    /// Floats of split-K partials a launch needs (none without splits): per row block, per column block and
    /// split, a tile of min(m, 64) rows × sw·64 columns.
    pub fn partial_floats(&self, m: usize) -> usize {
        if self.splits == 1 {
            0
        } else {
            self.row_blocks * self.cols * self.splits * m.min(ROWS_PER_BLOCK) * self.sw * 64
        }
    }
}

/// m-tiles of 16 rows a block of the streaming kernels covers for `m` rows: 1, 2 or 4.
pub fn m_tiles(m: usize) -> usize {
    m.div_ceil(16).next_power_of_two().clamp(1, 4)
}

/// Row blocks of [`ROWS_PER_BLOCK`] rows for `m` rows (1 up to 64).
pub fn row_blocks(m: usize) -> usize {
    m.div_ceil(ROWS_PER_BLOCK).max(1)
}

/// Blocks of 256 threads resident on one SM: two at `mt` = 1 (≤ 128 registers a thread), one above.
pub fn resident_blocks(mt: usize) -> usize {
    if mt == 1 {
        2
    } else {
        1
    }
}

/// Blocks of 256 threads resident on one SM for the swapped-tile kernel (`awq_swap_*`, m ≤ 16): three at
/// m ≤ 8 (one n8 token tile: 80 registers a thread, ptxas sm_90a), two at 9..16 rows.
pub fn swap_resident_blocks(m: usize) -> usize {
    if m <= 8 {
        3
    } else {
        2
    }
}

/// The [`PlanShape::Spread`] plan (see [`plan`]).
pub fn stream_plan(m: usize, strips: usize, groups: usize, group: usize, sms: usize) -> StreamPlan {
    plan(PlanShape::Spread, m, strips, groups, group, sms)
}

/// Plans the streaming kernel for `m` rows (more than 64 in row blocks of 64), `strips` strips of 64 columns,
/// `groups` groups of `group` values along k, on a GPU with `sms` multiprocessors. Two strips per block (the warps of a k-lane share the x rows
/// through L1, halving the x traffic from L2, which at m = 16 equals the weight traffic of one strip) unless n
/// is small, where one strip per block keeps the number of splits, and so the final sum, small. Each split
/// adds an f32 partial tile that the last block of a column sums.
pub fn plan(
    shape: PlanShape,
    m: usize,
    strips: usize,
    groups: usize,
    group: usize,
    sms: usize,
) -> StreamPlan {
    plan_resident(
        shape,
        m,
        strips,
        groups,
        group,
        sms,
        resident_blocks(m_tiles(m)),
    )
}

/// [`plan`] for a kernel with `resident` blocks per SM (the [`PlanShape::Balanced`] plan fills that many
/// slots per SM).
pub fn plan_resident(
    shape: PlanShape,
    m: usize,
    strips: usize,
    groups: usize,
    group: usize,
    sms: usize,
    resident: usize,
) -> StreamPlan {
    let mt = m_tiles(m);
    let cpg = group / CHUNK_K;
    let cb = [8, 4, 2, 1]
        .into_iter()
        .find(|&c| cpg.is_multiple_of(c) && (mt < 4 || c <= 2))
        .unwrap_or(1);
    let sw = if strips >= 64 { 2 } else { 1 };
    let kw = 8 / sw;
    let cols = strips.div_ceil(sw);
    let row_blocks = row_blocks(m);
    // Column blocks × row blocks before any split.
    let tiles = cols * row_blocks;
    let max_splits = (if sw == 2 { 8 } else { MAX_SPLITS })
        .min(groups.div_ceil(kw))
        .max(1);
    // Groups per warp for `splits` splits, and the split count that gpw really needs (no empty split).
    let settle = |splits: usize| {
        let gpw = groups.div_ceil(splits * kw).max(1);
        (groups.div_ceil(gpw * kw).max(1), gpw)
    };
    let (splits, gpw) = match shape {
        PlanShape::Spread => settle((4 * sms.max(1)).div_ceil(tiles).clamp(1, max_splits)),
        PlanShape::Balanced => {
            let slots = resident.max(1) * sms.max(1);
            let fill = |blocks: usize| blocks as f64 / (blocks.div_ceil(slots) * slots) as f64;
            let mut best = settle(1);
            for s in 2..=max_splits {
                let cand = settle(s);
                let (b, c) = (fill(tiles * best.0), fill(tiles * cand.0));
                // A clearly fuller last wave wins; near-equals keep the fewer blocks found first.
                if c > b + 0.02 {
                    best = cand;
                }
            }
            best
        }
    };
    StreamPlan {
        mt,
        sw,
        cols,
        row_blocks,
        splits,
        gpw,
        cb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_batch_divides_the_chunks_of_a_group() {
        for (group, m, cb) in [
            (32, 1, 2),
            (64, 16, 4),
            (128, 1, 8),
            (256, 20, 8),
            (48, 1, 1),
            (96, 1, 2),
            (128, 64, 2),
            (16, 1, 1),
        ] {
            assert_eq!(
                stream_plan(m, 10, 4, group, 132).cb,
                cb,
                "group {group}, m {m}"
            );
        }
    }

    #[test]
    fn plans_fill_the_gpu_and_cover_every_group() {
        for shape in [PlanShape::Spread, PlanShape::Balanced] {
            for (m, strips, groups) in [
                (1, 160, 64),
                (16, 128, 64),
                (16, 924, 64),
                (16, 128, 231),
                (64, 16, 64),
                (3, 1, 1),
                (40, 2, 3),
                (1, 1, 2000),
                (65, 128, 64),
                (200, 924, 64),
                (256, 2, 231),
            ] {
                let p = plan(shape, m, strips, groups, 128, 132);
                assert_eq!(p.cb, if p.mt == 4 { 2 } else { 8 });
                let kw = 8 / p.sw;
                assert!(p.splits * p.gpw * kw >= groups, "{shape:?} {p:?}");
                assert!(
                    (p.splits - 1) * p.gpw * kw < groups,
                    "{shape:?} {p:?}: an empty split"
                );
                assert!(p.splits <= MAX_SPLITS && p.mt * 16 >= m.min(64));
                assert!(p.sw == 1 || p.splits <= 8);
                assert_eq!(p.cols, strips.div_ceil(p.sw));
                assert_eq!(p.row_blocks, m.div_ceil(64));
                assert!(p.row_blocks == 1 || p.mt == 4);
            }
        }
    }

    #[test]
    fn the_spread_plan_is_the_measured_one() {
        // Qwen2.5-72B at m = 1 on 132 SMs (the plans behind the H200 figures of PERF.md).
        let p = stream_plan(1, 128, 64, 128, 132); // 8192 x 8192
        assert_eq!((p.sw, p.cols, p.splits, p.gpw), (2, 64, 8, 2));
        let p = stream_plan(1, 924, 64, 128, 132); // 8192 x 59136
        assert_eq!((p.cols, p.splits, p.gpw), (462, 2, 8));
    }

    #[test]
    fn the_balanced_plan_fills_one_wave_with_longer_warps() {
        // 8192 x 8192, m = 1: 64 column blocks × 4 splits = 256 of the 264 resident slots, 4 groups a warp.
        let p = plan(PlanShape::Balanced, 1, 128, 64, 128, 132);
        assert_eq!((p.splits, p.gpw, p.blocks()), (4, 4, 256));
        // 8192 x 10240: 80 column blocks; 3 splits (240 blocks, 91% of one wave) rather than 4 (1.2 waves).
        let p = plan(PlanShape::Balanced, 1, 160, 64, 128, 132);
        assert_eq!((p.splits, p.gpw, p.blocks()), (3, 6, 240));
        // 29568 x 8192: 231 groups, 4 splits of 15 groups a warp.
        let p = plan(PlanShape::Balanced, 1, 128, 231, 128, 132);
        assert_eq!((p.splits, p.gpw), (4, 15));
        // m = 32 (two m-tiles) runs one block per SM: 132 slots, 64 column blocks × 2 splits.
        let p = plan(PlanShape::Balanced, 32, 128, 64, 128, 132);
        assert_eq!((p.mt, p.splits, p.gpw, p.blocks()), (2, 2, 8, 128));
        // The swapped-tile kernel at m = 1 keeps three blocks per SM (396 slots): 8192 x 8192 then takes 6
        // splits of 3 groups a warp, 384 blocks (97% of one wave).
        let p = plan_resident(
            PlanShape::Balanced,
            1,
            128,
            64,
            128,
            132,
            swap_resident_blocks(1),
        );
        assert_eq!((p.splits, p.gpw, p.blocks()), (6, 3, 384));
        assert_eq!(swap_resident_blocks(9), 2);
        // The spread plan does not depend on the residency.
        assert_eq!(
            plan_resident(PlanShape::Spread, 1, 128, 64, 128, 132, 3),
            plan(PlanShape::Spread, 1, 128, 64, 128, 132)
        );
    }

    #[test]
    fn more_than_64_rows_go_in_row_blocks_that_count_towards_the_grid() {
        // m = 200 on 8192 x 8192: 4 row blocks of 4 m-tiles; the spread plan's ~4 blocks per SM come from
        // 64 column blocks x 4 row blocks x 3 splits.
        let p = stream_plan(200, 128, 64, 128, 132);
        assert_eq!((p.mt, p.row_blocks, p.cols), (4, 4, 64));
        assert_eq!((p.splits, p.gpw), (3, 6));
        assert_eq!(p.blocks(), 64 * 4 * 3);
        // The partials: per row block, a tile of 64 rows (not 200).
        assert_eq!(p.partial_floats(200), 4 * 64 * 3 * 64 * 2 * 64);
        assert_eq!(
            stream_plan(1, 128, 64, 128, 132).partial_floats(1),
            64 * 8 * 128
        );
        // k = 512 is 4 groups: one per k-lane, no split, no partials.
        assert_eq!(stream_plan(16, 924, 4, 128, 132).partial_floats(16), 0);
    }
}
