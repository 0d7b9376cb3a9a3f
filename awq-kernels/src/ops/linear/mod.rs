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
                    let gpu = crate::cuda::Gpu::shared()?;
                    let (qw, qz) = (qweight.as_u32_bits()?, qzeros.as_u32_bits()?);
                    let weights = with_float_slice!(scales, "Linear::to_device", |s| {
                        super::awq::cuda::AwqGpuWeights::upload(
                            &gpu, qw, qz, s, *k, *n, *group, dtype,
                        )?
                    });
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
