//! The paged KV cache: fixed-size blocks of `block_size` token slots taken from one pool, and a block table
//! per sequence (the vLLM / LMDeploy design). Nothing is copied when a sequence grows; batching many
//! sequences, sharing prefixes (reference counts) and bounding memory need no other layout.
//!
//! Layout per layer, keys and values alike: `[num_blocks * block_size, h_kv, d]`; f32 on the CPU, the
//! activation dtype on a GPU.

use crate::{DType, Device, Error, Result, Tensor};

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

/// Cache slots checked against a pool (and uploaded once when the pool is on a GPU): the rows of one
/// forward pass, written by every layer.
pub struct KvSlots {
    slots: Vec<usize>,
    #[cfg(feature = "cuda")]
    device: Option<crate::cuda::buffer::GpuBuffer>,
}

/// The pool of blocks shared by all sequences.
pub struct PagedKvCache {
    config: KvCacheConfig,
    /// Per layer `[num_blocks * block_size, h_kv * d]`.
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    free: Vec<u32>,
    ref_counts: Vec<u32>,
}

impl PagedKvCache {
    /// A pool with every block free. The memory is zero-initialized, so the OS commits pages only as
    /// blocks are first written.
    pub fn new(config: KvCacheConfig) -> Self {
        Self::new_on(config, Device::Cpu, DType::F32).expect("a CPU cache of f32 always allocates")
    }

    /// A pool on `device` holding `dtype` (the CPU computes in f32, so a CPU pool is always f32).
    pub fn new_on(config: KvCacheConfig, device: Device, dtype: DType) -> Result<Self> {
        let shape = [config.num_blocks * config.block_size, config.token_stride()];
        let make = || -> Result<Tensor> {
            match device {
                Device::Cpu => Ok(Tensor::zeros(DType::F32, &shape)),
                #[cfg(feature = "cuda")]
                Device::Cuda(i) => {
                    let gpu = crate::cuda::Gpu::shared_ordinal(i)?;
                    let len = shape[0] * shape[1];
                    Tensor::from_gpu_buffer(
                        crate::cuda::buffer::GpuBuffer::zeros(&gpu, dtype, len)?,
                        &shape,
                    )
                }
                #[cfg(not(feature = "cuda"))]
                Device::Cuda(_) => Err(Error::Unsupported("no CUDA support in this build".into())),
            }
        };
        let _ = dtype;
        Ok(PagedKvCache {
            keys: (0..config.layers).map(|_| make()).collect::<Result<_>>()?,
            values: (0..config.layers).map(|_| make()).collect::<Result<_>>()?,
            // Hand out low block numbers first.
            free: (0..config.num_blocks as u32).rev().collect(),
            ref_counts: vec![0; config.num_blocks],
            config,
        })
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
        let slots = self.slots(table, start, t)?;
        let k = Tensor::from_vec(keys.to_vec(), &[t, stride])?;
        let v = Tensor::from_vec(values.to_vec(), &[t, stride])?;
        self.write_rows(layer, &k, &v, &slots)
    }

    /// The cache slots of positions `start..start + t` of a sequence; an error if they are not reserved.
    pub fn slots(&self, table: &BlockTable, start: usize, t: usize) -> Result<Vec<usize>> {
        if (start + t).div_ceil(self.config.block_size) > table.blocks.len() {
            return Err(Error::shape(
                "kv_cache.write",
                format!("positions {start}..{} are not reserved", start + t),
            ));
        }
        Ok((start..start + t)
            .map(|p| self.slot(&table.blocks, p))
            .collect())
    }

    /// Checks `slots` against the pool once and, on a GPU, uploads them once, for every layer's
    /// [`Self::write_rows_prepared`] in a forward pass.
    pub fn prepare_slots(&self, slots: &[usize]) -> Result<KvSlots> {
        let capacity = self.config.num_blocks * self.config.block_size;
        if let Some(&bad) = slots.iter().find(|&&s| s >= capacity) {
            return Err(Error::shape(
                "kv_cache.write_rows",
                format!("slot {bad} outside the pool of {capacity}"),
            ));
        }
        #[cfg(feature = "cuda")]
        let device = match self.keys.first().map(Tensor::device) {
            Some(Device::Cuda(_)) => Some(crate::cuda::ops::upload_slots(slots)?),
            _ => None,
        };
        Ok(KvSlots {
            slots: slots.to_vec(),
            #[cfg(feature = "cuda")]
            device,
        })
    }

    /// Writes `keys` and `values` `[slots.len(), h_kv * d]` of layer `layer` into the given slots.
    pub fn write_rows(
        &mut self,
        layer: usize,
        keys: &Tensor,
        values: &Tensor,
        slots: &[usize],
    ) -> Result<()> {
        let prepared = self.prepare_slots(slots)?;
        self.write_rows_prepared(layer, keys, values, &prepared)
    }

    /// [`Self::write_rows`] with slots from [`Self::prepare_slots`].
    pub fn write_rows_prepared(
        &mut self,
        layer: usize,
        keys: &Tensor,
        values: &Tensor,
        prepared: &KvSlots,
    ) -> Result<()> {
        let slots = &prepared.slots;
        let stride = self.config.token_stride();
        if keys.shape() != [slots.len(), stride] || values.shape() != keys.shape() {
            return Err(Error::shape(
                "kv_cache.write_rows",
                format!(
                    "keys {:?} / values {:?} must be [{}, {stride}]",
                    keys.shape(),
                    values.shape(),
                    slots.len()
                ),
            ));
        }
        #[cfg(feature = "cuda")]
        if keys.device() != Device::Cpu {
            let Some(slots_gpu) = &prepared.device else {
                return Err(Error::Unsupported(
                    "kv_cache.write_rows: the slots were prepared for a CPU pool".into(),
                ));
            };
            let (kc, vc) = (&mut self.keys[layer], &mut self.values[layer]);
            return crate::cuda::ops::kv_write(keys, values, kc, vc, slots_gpu, stride);
        }
        let (ks, vs) = (keys.as_slice::<f32>()?, values.as_slice::<f32>()?);
        let kc = self.keys[layer].as_mut_slice::<f32>()?;
        for (i, &slot) in slots.iter().enumerate() {
            kc[slot * stride..(slot + 1) * stride]
                .copy_from_slice(&ks[i * stride..(i + 1) * stride]);
        }
        let vc = self.values[layer].as_mut_slice::<f32>()?;
        for (i, &slot) in slots.iter().enumerate() {
            vc[slot * stride..(slot + 1) * stride]
                .copy_from_slice(&vs[i * stride..(i + 1) * stride]);
        }
        Ok(())
    }

    /// Takes the fused output of a layer's q|k|v projection apart: q and k rotated (rope at the rows'
    /// positions), k and v written into the prepared slots of layer `layer`, q returned `[t, heads, d]`.
    /// `qkv` is `[t, (heads + 2·h_kv)·d]`, q then k then v. On a GPU one kernel does all of it (instead of a
    /// column split, two rope launches and a cache write, three launches fewer per layer and step); on the
    /// CPU the same steps run one after the other. Both give the bits of those steps.
    pub fn write_qkv_rope(
        &mut self,
        layer: usize,
        qkv: &Tensor,
        heads: usize,
        rope: &crate::ops::rope::RopeInputs,
        prepared: &KvSlots,
    ) -> Result<Tensor> {
        let (kv_heads, d) = (self.config.kv_heads, self.config.head_dim);
        let t = prepared.slots.len();
        if layer >= self.keys.len()
            || qkv.shape() != [t, (heads + 2 * kv_heads) * d]
            || rope.rows() != t
            || rope.head_dim() != d
        {
            return Err(Error::shape(
                "kv_cache.write_qkv_rope",
                format!(
                    "layer {layer} of {}, q|k|v {:?} for {t} rows of {heads} + 2·{kv_heads} heads of {d}, \
                     rope for {} rows of head dim {}",
                    self.keys.len(),
                    qkv.shape(),
                    rope.rows(),
                    rope.head_dim()
                ),
            ));
        }
        #[cfg(feature = "cuda")]
        if qkv.device() != Device::Cpu {
            let (Some(slots_gpu), Some((positions, inv_freq))) =
                (&prepared.device, rope.on_device())
            else {
                return Err(Error::Unsupported(
                    "kv_cache.write_qkv_rope: slots or rope inputs were prepared for the CPU"
                        .into(),
                ));
            };
            let (kc, vc) = (&mut self.keys[layer], &mut self.values[layer]);
            return crate::cuda::ops::qkv_rope_write(
                qkv, heads, kv_heads, kc, vc, positions, inv_freq, slots_gpu,
            );
        }
        let stride = kv_heads * d;
        let [q, k, v] = crate::ops::split_columns3(qkv, [heads * d, stride, stride])?;
        let mut q = q.reshape(&[t, heads, d])?;
        let mut k = k.reshape(&[t, kv_heads, d])?;
        crate::ops::rope::rope_inplace_prepared(&mut q, rope)?;
        crate::ops::rope::rope_inplace_prepared(&mut k, rope)?;
        self.write_rows_prepared(layer, &k.reshape(&[t, stride])?, &v, prepared)?;
        Ok(q)
    }

    /// Keys and values of one layer, `[num_blocks * block_size, h_kv * d]`, addressed through [`Self::slot`].
    pub fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Writes every page of a CPU pool once, so its memory is taken now (a pool too large for the
    /// machine fails at start, not midway through serving) and the process's resident size stays flat
    /// as blocks are used. A GPU pool is already allocated in full; nothing to do there.
    pub fn commit_host_memory(&mut self) {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            if let Ok(values) = t.as_mut_slice::<f32>() {
                values.fill(0.0);
                std::hint::black_box(&values);
            }
        }
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
        let (k, v) = (k.as_slice::<f32>().unwrap(), v.as_slice::<f32>().unwrap());
        for pos in 0..6 {
            let slot = cache.slot(table.blocks(), pos);
            assert_eq!(&k[slot * 2..slot * 2 + 2], &keys[pos * 2..pos * 2 + 2]);
            assert_eq!(&v[slot * 2..slot * 2 + 2], &values[pos * 2..pos * 2 + 2]);
        }
        assert!(cache.write(0, &table, 8, &keys[..2], &values[..2]).is_err());
    }

    #[test]
    fn a_fused_qkv_row_is_rotated_and_written_by_hand() {
        use crate::ops::rope::RopeInputs;
        // One q head and one kv head of d = 2: at position 1 with theta 1, rope rotates each pair (a, b) by
        // 1 radian: (a·cos 1 − b·sin 1, b·cos 1 + a·sin 1).
        let mut cache = pool(2);
        let qkv = Tensor::from_vec(vec![1.0, 0.0, 0.0, 2.0, 5.0, 6.0], &[1, 6]).unwrap();
        let rope = RopeInputs::new(&[1], 2, 1.0, Device::Cpu).unwrap();
        let slots = cache.prepare_slots(&[6]).unwrap();
        let q = cache.write_qkv_rope(0, &qkv, 1, &rope, &slots).unwrap();
        let (c, s) = (1f32.cos(), 1f32.sin());
        assert_eq!(q.shape(), [1, 1, 2]);
        let q = q.as_slice::<f32>().unwrap();
        assert!((q[0] - c).abs() < 1e-6 && (q[1] - s).abs() < 1e-6, "{q:?}");
        let (k, v) = cache.layer(0);
        let (k, v) = (k.as_slice::<f32>().unwrap(), v.as_slice::<f32>().unwrap());
        assert!((k[12] + 2.0 * s).abs() < 1e-6 && (k[13] - 2.0 * c).abs() < 1e-6);
        assert_eq!(&v[12..14], &[5.0, 6.0]);
        // A row of the wrong width, rope inputs for other rows, a layer that does not exist: errors.
        let narrow = Tensor::from_vec(vec![0.0; 4], &[1, 4]).unwrap();
        assert!(cache.write_qkv_rope(0, &narrow, 1, &rope, &slots).is_err());
        let two = RopeInputs::new(&[1, 2], 2, 1.0, Device::Cpu).unwrap();
        assert!(cache.write_qkv_rope(0, &qkv, 1, &two, &slots).is_err());
        assert!(cache.write_qkv_rope(1, &qkv, 1, &rope, &slots).is_err());
    }
}
