//! Embedding lookup: rows of a `[vocab, c]` table (any float dtype) gathered into f32 `[t, c]`.

use half::{bf16, f16};

use crate::{DType, Error, FloatElement, Result, Tensor};

pub fn embedding(ids: &[u32], table: &Tensor) -> Result<Tensor> {
    let &[vocab, width] = table.shape() else {
        return Err(Error::shape(
            "embedding",
            format!("table must be [vocab, c], got {:?}", table.shape()),
        ));
    };
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::shape(
            "embedding",
            format!("token id {bad} is outside the vocabulary of {vocab}"),
        ));
    }
    #[cfg(feature = "cuda")]
    if table.device() != crate::Device::Cpu {
        return crate::cuda::ops::embedding(ids, table);
    }
    let mut out = vec![0.0f32; ids.len() * width];
    match table.dtype() {
        DType::F32 => gather(ids, table.as_slice::<f32>()?, width, &mut out),
        DType::F16 => gather(ids, table.as_slice::<f16>()?, width, &mut out),
        DType::BF16 => gather(ids, table.as_slice::<bf16>()?, width, &mut out),
        other => {
            return Err(Error::DType {
                op: "embedding",
                expected: DType::F32,
                got: other,
            })
        }
    }
    Tensor::from_vec(out, &[ids.len(), width])
}

fn gather<T: FloatElement>(ids: &[u32], table: &[T], width: usize, out: &mut [f32]) {
    for (o, &id) in out.chunks_mut(width).zip(ids) {
        let row = &table[id as usize * width..][..width];
        o.iter_mut().zip(row).for_each(|(o, v)| *o = v.to_f32());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_rows_and_refuses_out_of_range_ids() {
        let table = Tensor::from_vec(
            [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
                .map(bf16::from_f32)
                .to_vec(),
            &[3, 2],
        )
        .unwrap();
        let e = embedding(&[2, 0], &table).unwrap();
        assert_eq!(e.as_slice::<f32>().unwrap(), &[5.0, 6.0, 1.0, 2.0]);
        assert!(embedding(&[3], &table).is_err());
    }
}
