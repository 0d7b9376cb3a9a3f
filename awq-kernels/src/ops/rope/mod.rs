//! Rotary position embedding, "rotate-half" convention (Qwen2, HF `apply_rotary_pos_emb`).

pub mod cpu;

use crate::{Error, Result, Tensor};

/// Rotates `x` `[t, heads, d]` in place; row `i` is at position `positions[i]`.
pub fn rope_inplace(x: &mut Tensor, positions: &[usize], theta: f32) -> Result<()> {
    let &[t, heads, d] = x.shape() else {
        return Err(Error::shape(
            "rope",
            format!("expected [t, heads, d], got {:?}", x.shape()),
        ));
    };
    if positions.len() != t || !d.is_multiple_of(2) {
        return Err(Error::shape(
            "rope",
            format!(
                "{} positions for {t} rows, head dim {d} must be even",
                positions.len()
            ),
        ));
    }
    let table = cpu::RopeTable::new(d, theta);
    #[cfg(feature = "cuda")]
    if x.device() != crate::Device::Cpu {
        return crate::cuda::ops::rope_inplace(x, positions, table.inv_freq());
    }
    cpu::rope(x.as_mut_slice::<f32>()?, heads, positions, &table);
    Ok(())
}
