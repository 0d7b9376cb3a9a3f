//! The attention of one forward call, planned once for all its layers.
//!
//! Every layer attends over the same sequences (the same block tables, query rows and key counts); only the
//! layer of the cache changes. So the sequence rows are built once per forward, and on a GPU whose fast
//! kernels take the activations (f16/bf16, head dim 64 or 128) so are the device-side batch table, the
//! split-KV workspace of a pure decode step and the output buffer: each layer then launches its kernels
//! and uploads or allocates nothing. Anywhere else (the CPU, f32 activations on a GPU, other head dims)
//! each layer calls the generic [`paged_attention`] op, exactly as before.

use awq_kernels::kv_cache::PagedKvCache;
use awq_kernels::ops::attention::{paged_attention, AttnSeq};
use awq_kernels::{DType, Device, Tensor};

use crate::Result;

/// The attention of every layer of one forward call over `t` query rows.
pub(crate) struct ForwardAttention<'a> {
    /// One entry per sequence, query rows in input order.
    seqs: Vec<AttnSeq<'a>>,
    /// Query rows `t`, query heads `h` and head dim `d`.
    t: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
    path: Path,
}

enum Path {
    /// The generic op, one call per layer; keeps the last layer's output `[t, h·d]`.
    Generic(Option<Tensor>),
    #[cfg(feature = "cuda")]
    Gpu(Box<gpu::Plan>),
}

impl<'a> ForwardAttention<'a> {
    /// Plans attention over `seqs` for `heads` query heads of `cache`'s head dim, with activations of
    /// `dtype` on `device` (the model's).
    pub(crate) fn new(
        device: Device,
        dtype: DType,
        cache: &PagedKvCache,
        seqs: Vec<AttnSeq<'a>>,
        heads: usize,
        scale: f32,
    ) -> Result<Self> {
        let t = seqs.iter().map(|s| s.q_len).sum();
        let head_dim = cache.config().head_dim;
        #[cfg(feature = "cuda")]
        if let Some(plan) = gpu::Plan::new(device, dtype, cache, &seqs, t, heads)? {
            return Ok(ForwardAttention {
                seqs,
                t,
                heads,
                head_dim,
                scale,
                path: Path::Gpu(Box::new(plan)),
            });
        }
        #[cfg(not(feature = "cuda"))]
        let _ = (device, dtype);
        Ok(ForwardAttention {
            seqs,
            t,
            heads,
            head_dim,
            scale,
            path: Path::Generic(None),
        })
    }

    /// Causal attention of `q` `[t, h, d]` over layer `layer` of `cache` (this call's keys and values
    /// already written). Returns `[t, h·d]`, valid until the next call.
    pub(crate) fn layer(
        &mut self,
        q: &Tensor,
        cache: &PagedKvCache,
        layer: usize,
    ) -> Result<&Tensor> {
        match &mut self.path {
            Path::Generic(last) => {
                let o = paged_attention(q, cache, layer, &self.seqs, self.scale)?
                    .reshape(&[self.t, self.heads * self.head_dim])?;
                Ok(last.insert(o))
            }
            #[cfg(feature = "cuda")]
            Path::Gpu(plan) => plan.layer(q, cache, layer, self.scale),
        }
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use std::sync::Arc;

    use awq_kernels::cuda::attention::{
        decode_attention_into, decode_supported, flash_attention_into, flash_supported, AttnBatch,
        DecodePlan,
    };
    use awq_kernels::cuda::buffer::GpuBuffer;
    use awq_kernels::kv_cache::PagedKvCache;
    use awq_kernels::ops::attention::AttnSeq;
    use awq_kernels::{DType, Device, Tensor};

    use crate::Result;

    /// What the GPU kernels need, made once per forward.
    pub(super) struct Plan {
        /// The sequences with query rows, uploaded: block tables and (q_start, q_len, kv_start, kv_len).
        batch: AttnBatch,
        /// The split-KV workspace when every sequence has one query row (a decode step).
        decode: Option<DecodePlan>,
        /// `[t, h·d]`, written by every layer in turn (the stream orders each layer's write after the
        /// previous layer's reads).
        out: Tensor,
    }

    impl Plan {
        /// `None` when the generic op should run instead: not on a GPU, activations or head dim the
        /// kernels do not take, or no query rows at all.
        pub(super) fn new(
            device: Device,
            dtype: DType,
            cache: &PagedKvCache,
            seqs: &[AttnSeq],
            t: usize,
            heads: usize,
        ) -> Result<Option<Plan>> {
            let cfg = cache.config();
            let d = cfg.head_dim;
            let active: Vec<AttnSeq> = seqs.iter().copied().filter(|s| s.q_len > 0).collect();
            if device == Device::Cpu
                || !flash_supported(dtype, d)
                || active.is_empty()
                || cfg.layers == 0
            {
                return Ok(None);
            }
            let gpu = Arc::clone(&cache.layer(0).0.gpu_buffer()?.gpu);
            let batch = AttnBatch::paged(&gpu, &active, cfg.block_size)?;
            let decode = if batch.is_decode() && decode_supported(dtype, d, heads / cfg.kv_heads) {
                Some(DecodePlan::new(&gpu, &batch, heads, cfg.kv_heads, d)?)
            } else {
                None
            };
            // Rows no sequence claims (none in a forward, whose rows are its sequences' tokens) would
            // be left as they are: zero them once, as the CPU op does.
            let len = t * heads * d;
            let buffer = if batch.covers_all_rows() {
                GpuBuffer::output(&gpu, dtype, len)?
            } else {
                GpuBuffer::zeros(&gpu, dtype, len)?
            };
            Ok(Some(Plan {
                batch,
                decode,
                out: Tensor::from_gpu_buffer(buffer, &[t, heads * d])?,
            }))
        }

        pub(super) fn layer(
            &mut self,
            q: &Tensor,
            cache: &PagedKvCache,
            layer: usize,
            scale: f32,
        ) -> Result<&Tensor> {
            let h_kv = cache.config().kv_heads;
            let (kc, vc) = cache.layer(layer);
            // The previous layer's output was only read (o_proj), so this does not copy.
            let out = self.out.gpu_buffer_mut()?;
            match &mut self.decode {
                Some(plan) => {
                    decode_attention_into(q, kc, vc, h_kv, &self.batch, plan, scale, out)?
                }
                None => flash_attention_into(q, kc, vc, h_kv, &self.batch, true, scale, out)?,
            }
            Ok(&self.out)
        }
    }
}
