//! Rotary position embedding, "rotate-half" convention (Qwen2, HF `apply_rotary_pos_emb`).

pub mod cpu;

use crate::{Error, Result, Tensor};

/// The positions of a forward pass's rows and the rotation frequencies, prepared once and used by every
/// layer (on a GPU both are uploaded once, not by each of the 2 x layers rope calls).
pub struct RopeInputs {
    positions: Vec<usize>,
    table: cpu::RopeTable,
    #[cfg(feature = "cuda")]
    device: Option<(
        crate::cuda::buffer::GpuBuffer,
        crate::cuda::buffer::GpuBuffer,
    )>,
}

impl RopeInputs {
    /// For rows at `positions`, heads of `head_dim`, base `theta`, on `device`.
    pub fn new(
        positions: &[usize],
        head_dim: usize,
        theta: f32,
        device: crate::Device,
    ) -> Result<RopeInputs> {
        if !head_dim.is_multiple_of(2) {
            return Err(Error::shape(
                "rope",
                format!("head dim {head_dim} must be even"),
            ));
        }
        let table = cpu::RopeTable::new(head_dim, theta);
        #[cfg(feature = "cuda")]
        let device = match device {
            crate::Device::Cpu => None,
            crate::Device::Cuda(_) => Some(crate::cuda::ops::upload_rope_inputs(
                positions,
                table.inv_freq(),
            )?),
        };
        #[cfg(not(feature = "cuda"))]
        let _ = device;
        Ok(RopeInputs {
            positions: positions.to_vec(),
            table,
            #[cfg(feature = "cuda")]
            device,
        })
    }
}

impl RopeInputs {
    /// Rows these inputs rotate.
    pub fn rows(&self) -> usize {
        self.positions.len()
    }

    /// The head dim they were made for.
    pub fn head_dim(&self) -> usize {
        2 * self.table.half_dim()
    }

    /// The positions (i32) and inverse frequencies on the GPU, when made for one.
    #[cfg(feature = "cuda")]
    pub(crate) fn on_device(
        &self,
    ) -> Option<&(
        crate::cuda::buffer::GpuBuffer,
        crate::cuda::buffer::GpuBuffer,
    )> {
        self.device.as_ref()
    }
}

/// Rotates `x` `[t, heads, d]` in place; row `i` is at position `positions[i]`.
pub fn rope_inplace(x: &mut Tensor, positions: &[usize], theta: f32) -> Result<()> {
    let d = x.shape().last().copied().unwrap_or(0);
    let inputs = RopeInputs::new(positions, d, theta, x.device())?;
    rope_inplace_prepared(x, &inputs)
}

/// [`rope_inplace`] with the positions and frequencies prepared by [`RopeInputs::new`].
pub fn rope_inplace_prepared(x: &mut Tensor, inputs: &RopeInputs) -> Result<()> {
    let &[t, heads, d] = x.shape() else {
        return Err(Error::shape(
            "rope",
            format!("expected [t, heads, d], got {:?}", x.shape()),
        ));
    };
    if inputs.positions.len() != t || inputs.table.half_dim() * 2 != d {
        return Err(Error::shape(
            "rope",
            format!(
                "{} positions and head dim {} for [{t}, {heads}, {d}]",
                inputs.positions.len(),
                inputs.table.half_dim() * 2
            ),
        ));
    }
    #[cfg(feature = "cuda")]
    if x.device() != crate::Device::Cpu {
        let Some((positions, inv_freq)) = &inputs.device else {
            return Err(Error::Unsupported(
                "rope: the inputs were prepared for the CPU".into(),
            ));
        };
        return crate::cuda::ops::rope_inplace(x, positions, inv_freq);
    }
    cpu::rope(
        x.as_mut_slice::<f32>()?,
        heads,
        &inputs.positions,
        &inputs.table,
    );
    Ok(())
}
