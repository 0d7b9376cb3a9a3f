//! The paged KV cache: fixed-size blocks of `block_size` token slots taken from one pool, and a block table
//! per sequence (the vLLM / LMDeploy design). Nothing is copied when a sequence grows; batching many
//! sequences, sharing prefixes (reference counts) and bounding memory need no other layout.
//!
//! Layout per layer, keys and values alike: `[num_blocks, block_size, h_kv, d]`, f32 on the CPU.

use crate::{Error, Result};

/// The geometry of a cache pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheConfig {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Token slots per block.
    pub block_size: usize,
    pub num_blocks: usize,
}

impl KvCacheConfig {
    /// Floats one token takes in one layer, for keys or for values.
    pub fn token_stride(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// The bytes the whole pool takes (keys and values, all layers).
    pub fn bytes(&self) -> usize {
        2 * self.layers * self.num_blocks * self.block_size * self.token_stride() * 4
    }
}

/// The blocks of one sequence, in order, and how many tokens have been stored in them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BlockTable {
    blocks: Vec<u32>,
    len: usize,
}

impl BlockTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Records that tokens up to `len` are now stored (after every layer wrote them).
    pub fn set_len(&mut self, len: usize) {
        self.len = len;
    }
}

/// The pool of blocks shared by all sequences.
pub struct PagedKvCache {
    config: KvCacheConfig,
    /// Per layer `[num_blocks, block_size, h_kv, d]`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    free: Vec<u32>,
    ref_counts: Vec<u32>,
}

impl PagedKvCache {
    /// A pool with every block free. The memory is zero-initialized, so the OS commits pages only as
    /// blocks are first written.
    pub fn new(config: KvCacheConfig) -> Self {
        let per_layer = config.num_blocks * config.block_size * config.token_stride();
        PagedKvCache {
            keys: (0..config.layers).map(|_| vec![0.0; per_layer]).collect(),
            values: (0..config.layers).map(|_| vec![0.0; per_layer]).collect(),
            // Hand out low block numbers first.
            free: (0..config.num_blocks as u32).rev().collect(),
            ref_counts: vec![0; config.num_blocks],
            config,
        }
    }

    pub fn config(&self) -> &KvCacheConfig {
        &self.config
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Makes room in `table` for `new_len` tokens. All or nothing: on error no block was taken.
    pub fn reserve(&mut self, table: &mut BlockTable, new_len: usize) -> Result<()> {
        let needed_blocks = new_len.div_ceil(self.config.block_size);
        let missing = needed_blocks.saturating_sub(table.blocks.len());
        if missing > self.free.len() {
            return Err(Error::KvCacheFull {
                needed: missing,
                free: self.free.len(),
                block_size: self.config.block_size,
            });
        }
        for _ in 0..missing {
            let block = self.free.pop().expect("checked above");
            self.ref_counts[block as usize] = 1;
            table.blocks.push(block);
        }
        Ok(())
    }

    /// Returns the blocks of `table` to the pool (those no other sequence still holds) and empties it.
    pub fn release(&mut self, table: &mut BlockTable) {
        for &block in &table.blocks {
            let count = &mut self.ref_counts[block as usize];
            *count -= 1;
            if *count == 0 {
                self.free.push(block);
            }
        }
        table.blocks.clear();
        table.len = 0;
    }

    /// The flat slot index of token `pos` of a sequence.
    #[inline]
    pub fn slot(&self, blocks: &[u32], pos: usize) -> usize {
        let block = blocks[pos / self.config.block_size] as usize;
        block * self.config.block_size + pos % self.config.block_size
    }

    /// Writes `t` tokens of keys and values (`[t, h_kv, d]` each) at positions `start..start + t`.
    pub fn write(
        &mut self,
        layer: usize,
        table: &BlockTable,
        start: usize,
        keys: &[f32],
        values: &[f32],
    ) -> Result<()> {
        let stride = self.config.token_stride();
        let t = keys.len() / stride;
        if keys.len() != values.len() || !keys.len().is_multiple_of(stride) {
            return Err(Error::shape(
                "kv_cache.write",
                format!(
                    "keys ({}) and values ({}) must both be [t, {}, {}]",
                    keys.len(),
                    values.len(),
                    self.config.kv_heads,
                    self.config.head_dim
                ),
            ));
        }
        if (start + t).div_ceil(self.config.block_size) > table.blocks.len() {
            return Err(Error::shape(
                "kv_cache.write",
                format!("positions {start}..{} are not reserved", start + t),
            ));
        }
        for i in 0..t {
            let slot = self.slot(&table.blocks, start + i);
            let dst = slot * stride..(slot + 1) * stride;
            let src = i * stride..(i + 1) * stride;
            self.keys[layer][dst.clone()].copy_from_slice(&keys[src.clone()]);
            self.values[layer][dst].copy_from_slice(&values[src]);
        }
        Ok(())
    }

    /// Keys and values of one layer, `[num_blocks * block_size, h_kv, d]`, addressed through [`Self::slot`].
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(num_blocks: usize) -> PagedKvCache {
        PagedKvCache::new(KvCacheConfig {
            layers: 1,
            kv_heads: 1,
            head_dim: 2,
            block_size: 4,
            num_blocks,
        })
    }

    #[test]
    fn reserving_takes_whole_blocks_and_release_returns_them() {
        let mut cache = pool(3);
        let mut table = BlockTable::new();
        cache.reserve(&mut table, 5).unwrap();
        assert_eq!(table.blocks().len(), 2);
        assert_eq!(cache.free_blocks(), 1);
        cache.release(&mut table);
        assert_eq!(cache.free_blocks(), 3);
        assert!(table.blocks().is_empty());
    }

    #[test]
    fn running_out_of_blocks_is_an_error_that_takes_nothing() {
        let mut cache = pool(2);
        let mut table = BlockTable::new();
        let err = cache.reserve(&mut table, 9).unwrap_err();
        assert!(matches!(
            err,
            Error::KvCacheFull {
                needed: 3,
                free: 2,
                ..
            }
        ));
        assert_eq!(cache.free_blocks(), 2);
        assert!(table.blocks().is_empty());
    }

    #[test]
    fn tokens_written_across_a_block_boundary_land_in_their_slots() {
        let mut cache = pool(4);
        let mut other = BlockTable::new();
        cache.reserve(&mut other, 1).unwrap(); // takes block 0, so the next table starts elsewhere
        let mut table = BlockTable::new();
        cache.reserve(&mut table, 6).unwrap();
        let keys: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let values: Vec<f32> = keys.iter().map(|v| -v).collect();
        cache.write(0, &table, 0, &keys, &values).unwrap();
        let (k, v) = cache.layer(0);
        for pos in 0..6 {
            let slot = cache.slot(table.blocks(), pos);
            assert_eq!(&k[slot * 2..slot * 2 + 2], &keys[pos * 2..pos * 2 + 2]);
            assert_eq!(&v[slot * 2..slot * 2 + 2], &values[pos * 2..pos * 2 + 2]);
        }
        assert!(cache.write(0, &table, 8, &keys[..2], &values[..2]).is_err());
    }
}
