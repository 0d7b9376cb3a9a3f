//! Linear layers: a closed enum chosen at load time from what the checkpoint holds (dense float weights or
//! AWQ int4 weights), so model code calls `forward` and never knows which.

pub mod cpu;

use half::{bf16, f16};

use super::awq::cpu::AwqWeights;
use super::{f32_slice, rows_and_width};
use crate::awq_format::PACK_FACTOR;
use crate::{DType, Error, Result, Tensor, WeightsScope};

/// Runs `$body` with `$v` bound to the elements of the float tensor `$t` as a typed slice (f32, f16 or
/// bf16); any other dtype returns a dtype error for `$op`.
macro_rules! with_float_slice {
    ($t:expr, $op:expr, |$v:ident| $body:expr) => {
        match $t.dtype() {
            DType::F32 => {
                let $v = $t.as_slice::<f32>()?;
                $body
            }
            DType::F16 => {
                let $v = $t.as_slice::<f16>()?;
                $body
            }
            DType::BF16 => {
                let $v = $t.as_slice::<bf16>()?;
                $body
            }
            other => {
                return Err(Error::DType {
                    op: $op,
                    expected: DType::F16,
                    got: other,
                })
            }
        }
    };
}

/// How the AWQ linears of a checkpoint were quantized (from its `quantization_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwqConfig {
    pub group_size: usize,
}

/// `y = x·Wᵀ + b` with `W` `[n, k]`. The CPU variants compute in f32 from the checkpoint's tensors; the GPU
/// variants (made by [`Linear::to_device`]) hold device copies in the activation dtype.
#[derive(Clone)]
pub enum Linear {
    Dense {
        /// `[n, k]`, f32, f16 or bf16.
        weight: Tensor,
        bias: Option<Vec<f32>>,
    },
    Awq {
        /// int32 `[k, n/8]`.
        qweight: Tensor,
        /// int32 `[k/g, n/8]`.
        qzeros: Tensor,
        /// `[k/g, n]`, f16, bf16 or f32.
        scales: Tensor,
        bias: Option<Vec<f32>>,
        k: usize,
        n: usize,
        group: usize,
    },
    /// Dense weight `[n, k]` and bias `[n]` on a GPU, in the activation dtype.
    #[cfg(feature = "cuda")]
    DenseGpu {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// AWQ weights repacked for the GPU kernels; bias `[n]` on the GPU in the activation dtype.
    #[cfg(feature = "cuda")]
    AwqGpu {
        weights: std::sync::Arc<super::awq::cuda::AwqGpuWeights>,
        bias: Option<Tensor>,
        k: usize,
        n: usize,
    },
}

impl Linear {
    /// Loads the linear `scope` (e.g. `model.layers.0.self_attn.q_proj.`) with `k` inputs and `n` outputs:
    /// AWQ tensors when `awq` is given, a dense `weight` otherwise; `bias` when `with_bias`.
    pub fn load(
        scope: &WeightsScope,
        k: usize,
        n: usize,
        with_bias: bool,
        awq: Option<AwqConfig>,
    ) -> Result<Linear> {
        let bias = if with_bias {
            Some(scope.get_float("bias", &[n])?.to_f32_vec()?)
        } else {
            None
        };
        let Some(AwqConfig { group_size: group }) = awq else {
            let weight = scope.get_float("weight", &[n, k])?;
            return Ok(Linear::Dense { weight, bias });
        };
        if group == 0
            || !k.is_multiple_of(group)
            || !group.is_multiple_of(PACK_FACTOR)
            || !n.is_multiple_of(PACK_FACTOR)
        {
            return Err(Error::Unsupported(format!(
                "AWQ linear `{}` with k={k}, n={n}, group size {group}: the group size must divide k and be a \
                 multiple of 8, and n must be a multiple of 8",
                scope.prefix()
            )));
        }
        let qweight = scope.get_with_dtype("qweight", &[k, n / PACK_FACTOR], DType::I32)?;
        let qzeros = scope.get_with_dtype("qzeros", &[k / group, n / PACK_FACTOR], DType::I32)?;
        let scales = scope.get_float("scales", &[k / group, n])?;
        Ok(Linear::Awq {
            qweight,
            qzeros,
            scales,
            bias,
            k,
            n,
            group,
        })
    }

    /// One layer computing the outputs of `parts` side by side: `forward(x)` = [part₀(x) | part₁(x) | …]
    /// (the q, k and v projections, or gate and up, fused into one GEMM: one launch and a longer weight
    /// stream instead of several short ones). Host layers of one kind with the same input width (and group
    /// for AWQ); a bias of zeros stands in for a part without one when another has one.
    pub fn concat_out(parts: &[&Linear]) -> Result<Linear> {
        let op = "Linear::concat_out";
        let Some(first) = parts.first() else {
            return Err(Error::shape(op, "no layers to fuse"));
        };
        let k = first.in_features();
        if parts.iter().any(|p| p.in_features() != k) {
            return Err(Error::shape(op, "layers with different input widths"));
        }
        let bias = |biases: Vec<(Option<&Vec<f32>>, usize)>| -> Option<Vec<f32>> {
            biases.iter().any(|b| b.0.is_some()).then(|| {
                biases
                    .iter()
                    .flat_map(|&(b, n)| b.cloned().unwrap_or_else(|| vec![0.0; n]))
                    .collect()
            })
        };
        match first {
            Linear::Dense { .. } => {
                let mut weights = Vec::new();
                let mut biases = Vec::new();
                for p in parts {
                    let Linear::Dense { weight, bias } = p else {
                        return Err(Error::Unsupported(format!(
                            "{op}: dense and other layers mixed"
                        )));
                    };
                    weights.push(weight);
                    biases.push((bias.as_ref(), weight.dim(0)));
                }
                Ok(Linear::Dense {
                    weight: join_2d(&weights, true)?,
                    bias: bias(biases),
                })
            }
            Linear::Awq { group, .. } => {
                let (mut qw, mut qz, mut sc, mut biases, mut n_total) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
                for p in parts {
                    let Linear::Awq {
                        qweight,
                        qzeros,
                        scales,
                        bias,
                        n,
                        group: g,
                        ..
                    } = p
                    else {
                        return Err(Error::Unsupported(format!(
                            "{op}: AWQ and other layers mixed"
                        )));
                    };
                    if g != group {
                        return Err(Error::shape(op, "AWQ layers with different group sizes"));
                    }
                    qw.push(qweight);
                    qz.push(qzeros);
                    sc.push(scales);
                    biases.push((bias.as_ref(), *n));
                    n_total += n;
                }
                Ok(Linear::Awq {
                    qweight: join_2d(&qw, false)?,
                    qzeros: join_2d(&qz, false)?,
                    scales: join_2d(&sc, false)?,
                    bias: bias(biases),
                    k,
                    n: n_total,
                    group: *group,
                })
            }
            #[cfg(feature = "cuda")]
            _ => Err(Error::Unsupported(format!(
                "{op}: fuse the layers before moving them to a GPU"
            ))),
        }
    }

    /// The outputs `start..end` of a dense layer (those rows of its weight and bias) as a layer of their
    /// own, on the layer's device (a GPU copies the rows there).
    pub fn output_rows(&self, start: usize, end: usize) -> Result<Linear> {
        let op = "Linear::output_rows";
        if start > end || end > self.out_features() {
            return Err(Error::shape(
                op,
                format!("outputs {start}..{end} of {}", self.out_features()),
            ));
        }
        match self {
            Linear::Dense { weight, bias } => Ok(Linear::Dense {
                weight: weight.narrow_rows(start, end)?,
                bias: bias.as_ref().map(|b| b[start..end].to_vec()),
            }),
            #[cfg(feature = "cuda")]
            Linear::DenseGpu { weight, bias } => Ok(Linear::DenseGpu {
                weight: weight.narrow_rows(start, end)?,
                bias: bias
                    .as_ref()
                    .map(|b| b.narrow_rows(start, end))
                    .transpose()?,
            }),
            _ => Err(Error::Unsupported(format!("{op}: a non-dense layer"))),
        }
    }

    /// This host dense layer with output `j` multiplied by `scale[j]` (a layer scale folded into the layer
    /// before it), on `device` computing in `dtype`: the product is made in f32 and rounded to `dtype`
    /// once. On a GPU the weight moves as stored (a synthetic one is made there) and a kernel scales it.
    pub fn scaled_outputs_to_device(
        &self,
        scale: &[f32],
        device: crate::Device,
        dtype: DType,
    ) -> Result<Linear> {
        let op = "Linear::scaled_outputs_to_device";
        let Linear::Dense { weight, bias } = self else {
            return Err(Error::Unsupported(format!(
                "{op}: a non-dense or device layer"
            )));
        };
        if scale.len() != weight.dim(0) {
            return Err(Error::shape(
                op,
                format!("{} scales for {} outputs", scale.len(), weight.dim(0)),
            ));
        }
        let bias = bias.as_ref().map(|b| {
            b.iter()
                .zip(scale)
                .map(|(v, s)| v * s)
                .collect::<Vec<f32>>()
        });
        #[cfg(feature = "cuda")]
        if device != crate::Device::Cpu {
            let weight = crate::cuda::ops::scale_rows(&weight.to_device(device)?, scale, dtype)?;
            let bias = bias
                .map(|b| {
                    Tensor::from_vec(b.clone(), &[b.len()])?
                        .to_dtype(dtype)?
                        .to_device(device)
                })
                .transpose()?;
            return Ok(Linear::DenseGpu { weight, bias });
        }
        let k = weight.dim(1);
        let mut w = weight.to_f32_vec()?;
        for (row, s) in w.chunks_exact_mut(k).zip(scale) {
            row.iter_mut().for_each(|v| *v *= s);
        }
        Linear::Dense {
            weight: Tensor::from_vec(w, weight.shape())?,
            bias,
        }
        .to_device(device, dtype)
    }

    /// [`Linear::concat_out`] of host layers `parts`, on `device` computing in `dtype`: the layer that
    /// fusing on the host and then moving would give. On a GPU each part moves on its own and the GPU joins
    /// them, so the host never holds a fused copy (and synthetic weights are made on the GPU only); AWQ
    /// parts whose widths the GPU layout cannot join (not whole 64-column strips) are fused on the host.
    pub fn concat_out_to_device(
        parts: &[&Linear],
        device: crate::Device,
        dtype: DType,
    ) -> Result<Linear> {
        #[cfg(feature = "cuda")]
        if device != crate::Device::Cpu && Self::joinable_on_device(parts) {
            let moved = parts
                .iter()
                .map(|p| p.to_device(device, dtype))
                .collect::<Result<Vec<_>>>()?;
            return Self::join_on_device(&moved);
        }
        Linear::concat_out(parts)?.to_device(device, dtype)
    }

    /// Host layers of one kind and input width whose GPU copies [`Self::join_on_device`] can join.
    #[cfg(feature = "cuda")]
    fn joinable_on_device(parts: &[&Linear]) -> bool {
        let Some((last, rest)) = parts.split_last() else {
            return false;
        };
        let k = last.in_features();
        parts.iter().all(|p| p.in_features() == k)
            && match last {
                Linear::Dense { .. } => parts.iter().all(|p| matches!(p, Linear::Dense { .. })),
                Linear::Awq { group, .. } => {
                    parts
                        .iter()
                        .all(|p| matches!(p, Linear::Awq { group: g, .. } if g == group))
                        && rest
                            .iter()
                            .all(|p| p.out_features().is_multiple_of(super::awq::cuda::STRIP))
                }
                _ => false,
            }
    }

    /// GPU layers of one kind, joined side by side on the device.
    #[cfg(feature = "cuda")]
    fn join_on_device(parts: &[Linear]) -> Result<Linear> {
        use crate::cuda::ops::concat_rows;
        let gpu = crate::cuda::Gpu::shared()?;
        let host_layers =
            || Error::Unsupported("Linear::join_on_device: mixed or host layers".into());
        // (bias, width, activation dtype) of each part.
        let mut biases = Vec::with_capacity(parts.len());
        for p in parts {
            match p {
                Linear::DenseGpu { weight, bias } => {
                    biases.push((bias.as_ref(), weight.dim(0), weight.dtype()))
                }
                Linear::AwqGpu {
                    weights, bias, n, ..
                } => biases.push((bias.as_ref(), *n, weights.dtype())),
                _ => return Err(host_layers()),
            }
        }
        let bias = if biases.iter().any(|b| b.0.is_some()) {
            let filled = biases
                .iter()
                .map(|&(b, n, dtype)| match b {
                    Some(b) => Ok(b.clone()),
                    None => Tensor::from_gpu_buffer(
                        crate::cuda::buffer::GpuBuffer::zeros(&gpu, dtype, n)?,
                        &[n],
                    ),
                })
                .collect::<Result<Vec<_>>>()?;
            Some(concat_rows(&filled.iter().collect::<Vec<_>>())?)
        } else {
            None
        };
        match &parts[0] {
            Linear::DenseGpu { .. } => {
                let weights = parts
                    .iter()
                    .map(|p| match p {
                        Linear::DenseGpu { weight, .. } => Ok(weight),
                        _ => Err(host_layers()),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Linear::DenseGpu {
                    weight: concat_rows(&weights)?,
                    bias,
                })
            }
            _ => {
                let weights = parts
                    .iter()
                    .map(|p| match p {
                        Linear::AwqGpu { weights, .. } => Ok(weights.as_ref()),
                        _ => Err(host_layers()),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let joined = super::awq::cuda::AwqGpuWeights::concat_out(&gpu, &weights)?;
                Ok(Linear::AwqGpu {
                    k: joined.k(),
                    n: joined.n(),
                    weights: std::sync::Arc::new(joined),
                    bias,
                })
            }
        }
    }

    /// A bias-free dense layer over a weight `[n, k]` already where it will compute (e.g. a device copy of
    /// an embedding table that a tied lm_head shares).
    pub fn dense_on_device(weight: Tensor) -> Linear {
        #[cfg(feature = "cuda")]
        if weight.device() != crate::Device::Cpu {
            return Linear::DenseGpu { weight, bias: None };
        }
        Linear::Dense { weight, bias: None }
    }

    pub fn in_features(&self) -> usize {
        match self {
            Linear::Dense { weight, .. } => weight.dim(1),
            Linear::Awq { k, .. } => *k,
            #[cfg(feature = "cuda")]
            Linear::DenseGpu { weight, .. } => weight.dim(1),
            #[cfg(feature = "cuda")]
            Linear::AwqGpu { k, .. } => *k,
        }
    }

    pub fn out_features(&self) -> usize {
        match self {
            Linear::Dense { weight, .. } => weight.dim(0),
            Linear::Awq { n, .. } => *n,
            #[cfg(feature = "cuda")]
            Linear::DenseGpu { weight, .. } => weight.dim(0),
            #[cfg(feature = "cuda")]
            Linear::AwqGpu { n, .. } => *n,
        }
    }

    /// This layer on `device`, computing in `dtype` there (the CPU always computes in f32).
    pub fn to_device(&self, device: crate::Device, dtype: DType) -> Result<Linear> {
        if device == crate::Device::Cpu {
            return Ok(self.clone());
        }
        #[cfg(feature = "cuda")]
        {
            let bias_on = |bias: &Option<Vec<f32>>| -> Result<Option<Tensor>> {
                bias.as_ref()
                    .map(|b| {
                        Tensor::from_vec(b.clone(), &[b.len()])?
                            .to_dtype(dtype)?
                            .to_device(device)
                    })
                    .transpose()
            };
            match self {
                Linear::Dense { weight, bias } => Ok(Linear::DenseGpu {
                    weight: weight.to_dtype(dtype)?.to_device(device)?,
                    bias: bias_on(bias)?,
                }),
                Linear::Awq {
                    qweight,
                    qzeros,
                    scales,
                    bias,
                    k,
                    n,
                    group,
                } => {
                    // The checkpoint's words move as they are (a synthetic tensor is made on the GPU)
                    // and the GPU repacks them: the host does no per-weight work.
                    let weights = super::awq::cuda::AwqGpuWeights::repack_on_device(
                        &qweight.to_device(device)?,
                        &qzeros.to_device(device)?,
                        &scales.to_dtype(dtype)?.to_device(device)?,
                        *k,
                        *n,
                        *group,
                    )?;
                    Ok(Linear::AwqGpu {
                        weights: std::sync::Arc::new(weights),
                        bias: bias_on(bias)?,
                        k: *k,
                        n: *n,
                    })
                }
                other => Ok(other.clone()),
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = dtype;
            Err(Error::Unsupported(format!(
                "cannot move a layer to {device}: this build has no CUDA support"
            )))
        }
    }

    #[cfg(feature = "cuda")]
    fn forward_gpu(&self, x: &Tensor, m: usize, k: usize, n: usize) -> Result<Tensor> {
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("x has a last dimension") = n;
        match self {
            Linear::DenseGpu { weight, bias } => {
                crate::cuda::ops::dense_linear(x, weight, bias.as_ref(), m, k, n)?.reshape(&shape)
            }
            Linear::AwqGpu { weights, bias, .. } => {
                let xb = x.gpu_buffer()?;
                let gpu = std::sync::Arc::clone(&xb.gpu);
                let mut y = crate::cuda::buffer::GpuBuffer::output(&gpu, x.dtype(), m * n)?;
                match x.dtype() {
                    DType::F16 => awq_gpu_forward::<f16>(xb, m, weights, bias.as_ref(), &mut y)?,
                    DType::BF16 => awq_gpu_forward::<bf16>(xb, m, weights, bias.as_ref(), &mut y)?,
                    other => {
                        return Err(Error::DType {
                            op: "AWQ linear (GPU)",
                            expected: DType::F16,
                            got: other,
                        })
                    }
                }
                Tensor::from_gpu_buffer(y, &shape)
            }
            _ => Err(Error::Unsupported(
                "a CPU layer was given a GPU input; move the model with to_device".into(),
            )),
        }
    }

    /// `x` `[.., k]` f32 → `[.., n]` f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let op = "linear";
        let (m, k) = rows_and_width(op, x)?;
        if k != self.in_features() {
            return Err(Error::shape(
                op,
                format!(
                    "input {:?} has {k} features, the layer takes {}",
                    x.shape(),
                    self.in_features()
                ),
            ));
        }
        let n = self.out_features();
        #[cfg(feature = "cuda")]
        if x.device() != crate::Device::Cpu {
            return self.forward_gpu(x, m, k, n);
        }
        let xs = f32_slice(op, x)?;
        let mut y = vec![0.0f32; m * n];
        match self {
            Linear::Dense { weight, bias } => {
                let b = bias.as_deref();
                with_float_slice!(weight, op, |w| cpu::linear(xs, m, k, w, n, b, &mut y))
            }
            Linear::Awq {
                qweight,
                qzeros,
                scales,
                bias,
                k,
                n,
                group,
            } => {
                let b = bias.as_deref();
                let (qweight, qzeros) = (qweight.as_u32_bits()?, qzeros.as_u32_bits()?);
                with_float_slice!(scales, op, |scales| {
                    let w = AwqWeights {
                        qweight,
                        qzeros,
                        scales,
                        k: *k,
                        n: *n,
                        group: *group,
                    };
                    super::awq::cpu::awq_linear(xs, m, w, b, &mut y)
                })
            }
            #[cfg(feature = "cuda")]
            Linear::DenseGpu { .. } | Linear::AwqGpu { .. } => {
                return Err(Error::Unsupported(
                    "a GPU layer was given a CPU input; move the input to the GPU".into(),
                ))
            }
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("x has a last dimension") = n;
        Tensor::from_vec(y, &shape)
    }
}

/// The AWQ GPU linear for activations of type `T` (f16 or bf16): `y` `[m, n]` from `x` `[m, k]`.
#[cfg(feature = "cuda")]
fn awq_gpu_forward<T>(
    x: &crate::cuda::buffer::GpuBuffer,
    m: usize,
    weights: &super::awq::cuda::AwqGpuWeights,
    bias: Option<&Tensor>,
    y: &mut crate::cuda::buffer::GpuBuffer,
) -> Result<()>
where
    T: super::awq::cuda::AwqFloat + crate::cuda::buffer::GpuElement,
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let bias = bias.map(|b| b.gpu_buffer()).transpose()?;
    let bias = bias.map(|b| b.view::<T>()).transpose()?;
    super::awq::cuda::awq_linear::<T>(
        &x.gpu,
        &x.view::<T>()?,
        m,
        weights,
        bias.as_ref(),
        &mut y.view_mut::<T>()?,
    )
}

/// 2-D host tensors of one dtype joined along rows (`rows = true`: [Σ r_i, c]) or columns ([r, Σ c_i]).
fn join_2d(parts: &[&Tensor], rows: bool) -> Result<Tensor> {
    let op = "Linear::concat_out";
    let dtype = parts[0].dtype();
    let mut shapes = Vec::new();
    for t in parts {
        let &[r, c] = t.shape() else {
            return Err(Error::shape(
                op,
                format!("expected 2-D weights, got {:?}", t.shape()),
            ));
        };
        if t.dtype() != dtype {
            return Err(Error::DType {
                op,
                expected: dtype,
                got: t.dtype(),
            });
        }
        shapes.push((r, c));
    }
    let size = dtype.size();
    let (r0, _) = shapes[0];
    let mut bytes = Vec::with_capacity(parts.iter().map(|t| t.bytes().len()).sum());
    let shape = if rows {
        let c0 = shapes[0].1;
        if shapes.iter().any(|&(_, c)| c != c0) {
            return Err(Error::shape(op, "stacked weights of different widths"));
        }
        for t in parts {
            bytes.extend_from_slice(t.bytes());
        }
        [shapes.iter().map(|s| s.0).sum(), c0]
    } else {
        if shapes.iter().any(|&(r, _)| r != r0) {
            return Err(Error::shape(
                op,
                "side-by-side weights of different heights",
            ));
        }
        for row in 0..r0 {
            for (t, &(_, c)) in parts.iter().zip(&shapes) {
                bytes.extend_from_slice(&t.bytes()[row * c * size..(row + 1) * c * size]);
            }
        }
        [r0, shapes.iter().map(|s| s.1).sum()]
    };
    Tensor::from_le_bytes(&bytes, dtype, &shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_awq(rng: &mut ChaCha8Rng, k: usize, n: usize, group: usize, bias: bool) -> Linear {
        let words = |count: usize, rng: &mut ChaCha8Rng| -> Vec<i32> {
            (0..count).map(|_| rng.gen::<u32>() as i32).collect()
        };
        let scales: Vec<half::f16> = (0..k / group * n)
            .map(|_| half::f16::from_f32(rng.gen_range(0.002f32..0.03)))
            .collect();
        Linear::Awq {
            qweight: Tensor::from_vec(words(k * n / 8, rng), &[k, n / 8]).unwrap(),
            qzeros: Tensor::from_vec(words(k / group * n / 8, rng), &[k / group, n / 8]).unwrap(),
            scales: Tensor::from_vec(scales, &[k / group, n]).unwrap(),
            bias: bias.then(|| (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()),
            k,
            n,
            group,
        }
    }

    fn random_dense(rng: &mut ChaCha8Rng, k: usize, n: usize, bias: bool) -> Linear {
        let w: Vec<half::bf16> = (0..n * k)
            .map(|_| half::bf16::from_f32(rng.gen_range(-0.1f32..0.1)))
            .collect();
        Linear::Dense {
            weight: Tensor::from_vec(w, &[n, k]).unwrap(),
            bias: bias.then(|| (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()),
        }
    }

    /// The fused layer's output, split back, equals each part's own output bit for bit: every output column
    /// is the same dot product over k, whatever its neighbours.
    fn assert_fused_equals_parts(parts: &[Linear], x: &Tensor) {
        let refs: Vec<&Linear> = parts.iter().collect();
        let fused = Linear::concat_out(&refs).unwrap();
        let n: usize = parts.iter().map(|p| p.out_features()).sum();
        assert_eq!((fused.in_features(), fused.out_features()), (x.dim(1), n));
        let got = fused.forward(x).unwrap().to_f32_vec().unwrap();
        let m = x.dim(0);
        let mut col = 0;
        for p in parts {
            let want = p.forward(x).unwrap().to_f32_vec().unwrap();
            let w = p.out_features();
            for r in 0..m {
                assert_eq!(
                    &got[r * n + col..r * n + col + w],
                    &want[r * w..(r + 1) * w]
                );
            }
            col += w;
        }
    }

    #[test]
    fn fused_awq_projections_compute_each_part() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // q, k, v of a GQA layer (k and v narrower, all with biases), and gate, up without.
        let qkv = [
            random_awq(&mut rng, 256, 128, 64, true),
            random_awq(&mut rng, 256, 32, 64, true),
            random_awq(&mut rng, 256, 32, 64, true),
        ];
        let gate_up = [
            random_awq(&mut rng, 256, 96, 64, false),
            random_awq(&mut rng, 256, 96, 64, false),
        ];
        for m in [1, 5] {
            let x: Vec<f32> = (0..m * 256).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let x = Tensor::from_vec(x, &[m, 256]).unwrap();
            assert_fused_equals_parts(&qkv, &x);
            assert_fused_equals_parts(&gate_up, &x);
        }
        // A part without a bias next to parts with one gets zeros.
        let mixed = [
            random_awq(&mut rng, 128, 16, 64, true),
            random_awq(&mut rng, 128, 8, 64, false),
        ];
        let x = Tensor::from_vec(vec![0.5f32; 128], &[1, 128]).unwrap();
        assert_fused_equals_parts(&mixed, &x);
    }

    #[test]
    fn fused_dense_projections_compute_each_part() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let parts = [
            random_dense(&mut rng, 64, 48, true),
            random_dense(&mut rng, 64, 16, false),
            random_dense(&mut rng, 64, 16, true),
        ];
        let x: Vec<f32> = (0..3 * 64).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        assert_fused_equals_parts(&parts, &Tensor::from_vec(x, &[3, 64]).unwrap());
    }

    #[test]
    fn layers_that_cannot_be_fused_are_refused() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let a = random_awq(&mut rng, 256, 16, 64, false);
        let other_k = random_awq(&mut rng, 128, 16, 64, false);
        let other_group = random_awq(&mut rng, 256, 16, 128, false);
        let dense = random_dense(&mut rng, 256, 16, false);
        assert!(Linear::concat_out(&[]).is_err());
        assert!(Linear::concat_out(&[&a, &other_k]).is_err());
        assert!(Linear::concat_out(&[&a, &other_group]).is_err());
        assert!(Linear::concat_out(&[&a, &dense]).is_err());
        assert!(Linear::concat_out(&[&dense, &a]).is_err());
    }
}
