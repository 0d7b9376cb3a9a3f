//! The AWQ "GEMM" packing as AutoAWQ (`WQLinear_GEMM`) and lmdeploy's `auto_awq` write it.
//! This module is the one place in the project that knows the nibble order.
//!
//! For a linear with `k` inputs and `n` outputs, group size `g`:
//! - `qweight` int32 `[k, n/8]`: word `qweight[row][c]` holds the 4-bit codes of the 8 output columns
//!   `8c .. 8c+8` for input row `row`; nibble slot `s` (bits `4s..4s+4`) holds column `8c + PACK_ORDER[s]`.
//! - `qzeros` int32 `[k/g, n/8]`: the 4-bit zero points, packed the same way.
//! - `scales` float `[k/g, n]`.
//! - The weight is `W[col][row] = (q - z) * s` with `q`, `z` taken for `(row, col)` and group `row / g`.
//!
//! Sources: AutoAWQ `awq/utils/packing_utils.py` (`AWQ_ORDER`, `AWQ_REVERSE_ORDER`) and lmdeploy
//! `WeightOnlyQLinear`; restated in the project's spec, section 9.4.

/// Nibble slot `s` of a packed word holds output column `8c + PACK_ORDER[s]`.
pub const PACK_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Output column `8c + j` lives in nibble slot `SLOT_OF_COLUMN[j]` of word `c`.
pub const SLOT_OF_COLUMN: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// Number of 4-bit values per packed 32-bit word.
pub const PACK_FACTOR: usize = 8;

/// The 4-bit code of output column `col` from the packed row `words` (`n/8` words).
#[inline(always)]
pub fn unpack_column(words: &[u32], col: usize) -> u32 {
    let word = words[col / PACK_FACTOR];
    (word >> (4 * SLOT_OF_COLUMN[col % PACK_FACTOR])) & 0xF
}

/// Unpacks one word into the 8 codes of its output columns `8c .. 8c+8`, in column order.
#[inline(always)]
pub fn unpack_word(word: u32) -> [u32; 8] {
    let mut out = [0u32; 8];
    for (slot, &col) in PACK_ORDER.iter().enumerate() {
        out[col] = (word >> (4 * slot)) & 0xF;
    }
    out
}

/// Packs the codes of 8 consecutive output columns (each `< 16`) into one word.
#[inline(always)]
pub fn pack_word(codes: [u32; 8]) -> u32 {
    let mut word = 0u32;
    for (slot, &col) in PACK_ORDER.iter().enumerate() {
        word |= (codes[col] & 0xF) << (4 * slot);
    }
    word
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_of_column_inverts_pack_order() {
        for (slot, &col) in PACK_ORDER.iter().enumerate() {
            assert_eq!(SLOT_OF_COLUMN[col], slot);
        }
    }

    #[test]
    fn packing_then_unpacking_returns_the_codes() {
        let codes = [1, 2, 3, 4, 5, 6, 7, 15];
        let word = pack_word(codes);
        assert_eq!(unpack_word(word), codes);
        for (col, &code) in codes.iter().enumerate() {
            assert_eq!(unpack_column(&[word], col), code);
        }
    }

    #[test]
    fn column_one_sits_in_the_fifth_nibble() {
        // AutoAWQ packs column 1 into bits 16..20 (slot 4): a hand-made word with only that nibble set.
        let word = 0x000A_0000u32;
        assert_eq!(unpack_column(&[word], 1), 0xA);
        assert_eq!(unpack_column(&[word], 0), 0);
        assert_eq!(unpack_column(&[word], 4), 0);
    }
}
