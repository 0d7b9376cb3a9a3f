//! Which CTA tile the flash attention kernel runs with. A rule from the batch's shape keeps 64 query rows
//! where 128-row CTAs would leave multiprocessors idle; elsewhere the GPU at hand decides by timing both
//! tiles on the first batch of each class of shape, as the AWQ autotuner does for its kernels
//! (`ops/awq/tune.rs`): two GPU sessions showed predictions missing by up to 2x in both directions.
//!
//! Both tiles give the same bits: a query row goes through the same mma sequence, the same key tiles in
//! the same order and the same online softmax whichever warp and m-tile hold it (a 128-row CTA of a causal
//! batch also visits key tiles that are wholly masked for its first rows, which leave them unchanged). So
//! the choice never changes a result; the GPU tests check the bits.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::Gpu;
use crate::ops::awq::tune::{pick, time_candidates, MARGIN};
use crate::{DType, Result};

/// Keys per tile of the flash kernel (`flash::BN` in `kernels/attention.cu`).
const KEYS_PER_TILE: usize = 64;

/// The query rows of one flash attention CTA (4 warps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashTile {
    /// 64 rows, 16 a warp: each warp keeps its Q fragments in registers for the whole key loop.
    Rows64,
    /// 128 rows, 32 a warp in two m-tiles: each K and V fragment read from shared memory serves both, half
    /// the shared-memory reads per tensor-core op of `Rows64` (FlashAttention-2's tile for head dims 64
    /// and 128); Q is re-read from shared memory at every key tile, and a short prompt gets half the CTAs.
    Rows128,
}

impl FlashTile {
    /// Query rows per CTA.
    pub fn rows(self) -> usize {
        match self {
            FlashTile::Rows64 => 64,
            FlashTile::Rows128 => 128,
        }
    }

    /// The kernel of this tile for a dtype suffix (`f16`, `bf16`) and head dim.
    pub(super) fn kernel(self, sfx: &str, d: usize) -> String {
        match self {
            FlashTile::Rows64 => format!("flash_fwd_{sfx}_d{d}"),
            FlashTile::Rows128 => format!("flash_fwd_{sfx}_d{d}_r128"),
        }
    }

    /// Dynamic shared memory: the Q tile and two K and two V tiles of 64 keys, `d` 16-bit values a row.
    pub(super) fn shared_bytes(self, d: usize) -> usize {
        (self.rows() + 4 * KEYS_PER_TILE) * d * 2
    }

    /// `FLASH_TILE=64` or `128` in the environment: that tile for every batch of the process.
    pub fn from_env() -> Option<FlashTile> {
        match std::env::var("FLASH_TILE").as_deref() {
            Ok("64") => Some(FlashTile::Rows64),
            Ok("128") => Some(FlashTile::Rows128),
            _ => None,
        }
    }
}

/// What a timed choice is kept for: the kernel (head dim, dtype), the mask, where the keys are, and the
/// number of 128-row CTAs rounded up to a power of two (the grid, which decides how well each tile fills
/// the GPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShapeClass {
    d: usize,
    dtype: DType,
    causal: bool,
    paged: bool,
    ctas: usize,
}

impl ShapeClass {
    /// The class of a batch of `b` sequences of at most `max_q_len` query rows and `h` query heads.
    pub fn of(
        max_q_len: usize,
        b: usize,
        h: usize,
        d: usize,
        dtype: DType,
        causal: bool,
        paged: bool,
    ) -> ShapeClass {
        let ctas = (max_q_len.div_ceil(128) * h * b).max(1).next_power_of_two();
        ShapeClass {
            d,
            dtype,
            causal,
            paged,
            ctas,
        }
    }

    /// The rule: 128 rows only when the batch still has two 128-row CTAs per multiprocessor (two fit on
    /// one); otherwise the CTAs count more than the reuse (a 100-token prompt on 64 heads has 64 of them).
    fn ruled_tile(&self, sms: usize) -> FlashTile {
        if self.ctas >= 2 * sms {
            FlashTile::Rows128
        } else {
            FlashTile::Rows64
        }
    }
}

fn chosen() -> &'static Mutex<HashMap<ShapeClass, FlashTile>> {
    static CHOSEN: OnceLock<Mutex<HashMap<ShapeClass, FlashTile>>> = OnceLock::new();
    CHOSEN.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The tile for a batch of `class` if nothing is left to time: `FLASH_TILE`'s, the rule's where it says 64
/// rows or on the CPU emulator (its timings mean nothing), or the one timed earlier in this process.
fn decided(gpu: &Gpu, class: ShapeClass) -> Result<Option<FlashTile>> {
    if let Some(tile) = FlashTile::from_env() {
        return Ok(Some(tile));
    }
    let ruled = class.ruled_tile(gpu.multiprocessors()?);
    if ruled == FlashTile::Rows64 || gpu.is_cpu_emulator() {
        return Ok(Some(ruled));
    }
    let chosen = chosen().lock().unwrap_or_else(|e| e.into_inner());
    Ok(chosen.get(&class).copied())
}

/// The tile for a batch of `class`: the [`decided`] one, or else the faster of the two on this GPU, timed
/// with `run` (which runs the batch with a given tile) and kept for the process. 128 rows stays unless 64
/// rows is faster by the autotuner's margin.
pub fn choose(
    gpu: &Gpu,
    class: ShapeClass,
    mut run: impl FnMut(FlashTile) -> Result<()>,
) -> Result<FlashTile> {
    if let Some(tile) = decided(gpu, class)? {
        return Ok(tile);
    }
    const CANDIDATES: [FlashTile; 2] = [FlashTile::Rows128, FlashTile::Rows64];
    let times = time_candidates(gpu, CANDIDATES.len(), |i| run(CANDIDATES[i]))?;
    let tile = CANDIDATES[pick(&times, MARGIN)];
    chosen()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(class, tile);
    Ok(tile)
}

/// The tile a batch of `class` runs with now: what [`choose`] returned, or before any timing the rule's
/// (128 rows wherever a timing is still to come).
pub fn current(gpu: &Gpu, class: ShapeClass) -> Result<FlashTile> {
    Ok(decided(gpu, class)?.unwrap_or(FlashTile::Rows128))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(max_q_len: usize, b: usize, h: usize) -> ShapeClass {
        ShapeClass::of(max_q_len, b, h, 128, DType::BF16, false, false)
    }

    #[test]
    fn long_prompts_take_the_128_row_tile_and_short_ones_keep_their_ctas() {
        // InternViT-6B on 13 tiles (13 x 1025 rows, 25 heads) and a 4096-token Qwen2.5-72B prefill (64
        // heads): thousands of CTAs either way.
        assert_eq!(class(1025, 13, 25).ruled_tile(132), FlashTile::Rows128);
        assert_eq!(class(4096, 1, 64).ruled_tile(132), FlashTile::Rows128);
        // A 100-token prompt on the 72B: 64 CTAs of 128 rows would leave half the SMs idle.
        assert_eq!(class(100, 1, 64).ruled_tile(132), FlashTile::Rows64);
        // The boundary: two CTAs per SM (the count rounded up to a power of two: 260 -> 512).
        assert_eq!(class(256, 2, 65).ruled_tile(132), FlashTile::Rows128);
        assert_eq!(class(128, 1, 128).ruled_tile(132), FlashTile::Rows64);
    }

    #[test]
    fn a_class_is_the_kernel_the_mask_the_keys_and_the_grid_in_powers_of_two() {
        assert_eq!(class(1025, 13, 25), class(1100, 13, 25)); // 2925 and 3250 CTAs: both 4096
        assert_ne!(class(1025, 13, 25), class(2100, 13, 25)); // 5525: 8192
        let causal = ShapeClass::of(1025, 13, 25, 128, DType::BF16, true, false);
        let paged = ShapeClass::of(1025, 13, 25, 128, DType::BF16, false, true);
        let f16 = ShapeClass::of(1025, 13, 25, 128, DType::F16, false, false);
        for other in [causal, paged, f16] {
            assert_ne!(class(1025, 13, 25), other);
        }
    }

    #[test]
    fn the_tiles_name_their_kernels_and_shared_memory() {
        assert_eq!(FlashTile::Rows64.kernel("bf16", 128), "flash_fwd_bf16_d128");
        assert_eq!(
            FlashTile::Rows128.kernel("f16", 64),
            "flash_fwd_f16_d64_r128"
        );
        // (64 + 4·64)·128·2 and (128 + 4·64)·128·2: 80 and 96 KB at d = 128.
        assert_eq!(FlashTile::Rows64.shared_bytes(128), 80 * 1024);
        assert_eq!(FlashTile::Rows128.shared_bytes(128), 96 * 1024);
    }
}
