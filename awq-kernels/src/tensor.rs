//! `Tensor`: a contiguous, row-major block of elements with a shape and a dtype, owned or memory-mapped.

use std::sync::{Arc, OnceLock};

use half::{bf16, f16};

use crate::dtype::OwnedBuffer;
use crate::synthetic::Fill;
use crate::{DType, Device, Element, Error, Result};

/// Read-only bytes shared by many tensors (a memory-mapped file, or bytes embedded in the program).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

#[derive(Clone)]
enum Buffer {
    Owned(OwnedBuffer),
    /// On a GPU; shared between clones (an op that writes in place copies it first if it is shared).
    #[cfg(feature = "cuda")]
    Cuda(Arc<crate::cuda::buffer::GpuBuffer>),
    /// A view into shared bytes; `offset` is aligned to the dtype (checked when the view is made).
    Mapped {
        bytes: SharedBytes,
        offset: usize,
        len: usize,
    },
    /// Pseudo-random elements described, not stored: made on the host at the first read (and kept), or
    /// by a kernel on the GPU when the tensor moves there unread.
    Synthetic(Arc<SyntheticBuffer>),
}

/// A synthetic tensor's recipe and, once read on the host, its elements.
struct SyntheticBuffer {
    fill: Fill,
    seed: u64,
    host: OnceLock<OwnedBuffer>,
}

impl SyntheticBuffer {
    fn host(&self, dtype: DType, len: usize) -> &OwnedBuffer {
        self.host.get_or_init(|| {
            let mut bytes = vec![0u8; len * dtype.size()];
            crate::synthetic::fill_bytes(&mut bytes, dtype, self.fill, self.seed)
                .expect("the fill was checked against the dtype when the tensor was made");
            OwnedBuffer::from_bytes(dtype, &bytes)
        })
    }
}

/// A contiguous tensor on the CPU. Shapes use the project's dimension names in comments: `[t, h, d]` etc.
#[derive(Clone)]
pub struct Tensor {
    buffer: Buffer,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({}, {:?})", self.dtype, self.shape)
    }
}

fn element_count(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// Wraps a vector; its length must match the shape.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        if data.len() != element_count(shape) {
            return Err(Error::shape(
                "Tensor::from_vec",
                format!("{} elements do not fill shape {shape:?}", data.len()),
            ));
        }
        Ok(Tensor {
            buffer: Buffer::Owned(T::wrap(data)),
            shape: shape.to_vec(),
            dtype: T::DTYPE,
        })
    }

    /// A tensor copied from little-endian bytes of any alignment.
    pub fn from_le_bytes(bytes: &[u8], dtype: DType, shape: &[usize]) -> Result<Tensor> {
        if bytes.len() != element_count(shape) * dtype.size() {
            return Err(Error::shape(
                "Tensor::from_le_bytes",
                format!("{} bytes do not hold {dtype} {shape:?}", bytes.len()),
            ));
        }
        Ok(Tensor {
            buffer: Buffer::Owned(OwnedBuffer::from_bytes(dtype, bytes)),
            shape: shape.to_vec(),
            dtype,
        })
    }

    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        Tensor {
            buffer: Buffer::Owned(OwnedBuffer::zeros(dtype, element_count(shape))),
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// A tensor over `len` bytes of `bytes` from `offset`. Zero-copy when the offset suits the dtype's
    /// alignment, a copy otherwise (safetensors does not promise aligned data offsets).
    pub fn from_shared_bytes(
        bytes: SharedBytes,
        offset: usize,
        len: usize,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Tensor> {
        if len != element_count(shape) * dtype.size() {
            return Err(Error::shape(
                "Tensor::from_shared_bytes",
                format!("{len} bytes do not hold {dtype} {shape:?}"),
            ));
        }
        let data = &(*bytes).as_ref()[offset..offset + len];
        let aligned = (data.as_ptr() as usize).is_multiple_of(dtype.size());
        let buffer = if aligned {
            Buffer::Mapped { bytes, offset, len }
        } else {
            Buffer::Owned(OwnedBuffer::from_bytes(dtype, data))
        };
        Ok(Tensor {
            buffer,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// A tensor of pseudo-random elements ([`crate::synthetic`]): nothing is allocated until it is read on
    /// the host or moved to a GPU, where a kernel makes the same bits.
    pub fn synthetic(dtype: DType, shape: &[usize], fill: Fill, seed: u64) -> Result<Tensor> {
        fill.check(dtype)?;
        Ok(Tensor {
            buffer: Buffer::Synthetic(Arc::new(SyntheticBuffer {
                fill,
                seed,
                host: OnceLock::new(),
            })),
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// The recipe of a synthetic tensor not yet made on the host.
    #[cfg(feature = "cuda")]
    fn unmade_synthetic(&self) -> Option<(Fill, u64)> {
        match &self.buffer {
            Buffer::Synthetic(s) if s.host.get().is_none() => Some((s.fill, s.seed)),
            _ => None,
        }
    }

    /// True when the elements are read in place from shared bytes (a memory-mapped file), not copied.
    pub fn is_mapped(&self) -> bool {
        matches!(self.buffer, Buffer::Mapped { .. })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> Device {
        match &self.buffer {
            #[cfg(feature = "cuda")]
            Buffer::Cuda(b) => Device::Cuda(b.gpu.ordinal()),
            _ => Device::Cpu,
        }
    }

    pub fn elem_count(&self) -> usize {
        element_count(&self.shape)
    }

    /// Size of dimension `i`; negative counts from the end.
    pub fn dim(&self, i: isize) -> usize {
        let idx = if i < 0 {
            self.shape.len() as isize + i
        } else {
            i
        };
        self.shape[idx as usize]
    }

    /// The raw bytes of a CPU tensor (empty for a GPU tensor: download it first with `to_device`).
    pub fn bytes(&self) -> &[u8] {
        match &self.buffer {
            Buffer::Owned(b) => b.bytes(),
            Buffer::Mapped { bytes, offset, len } => &(**bytes).as_ref()[*offset..*offset + *len],
            Buffer::Synthetic(s) => s.host(self.dtype, self.elem_count()).bytes(),
            #[cfg(feature = "cuda")]
            Buffer::Cuda(_) => &[],
        }
    }

    fn check_on_cpu(&self, op: &'static str) -> Result<()> {
        if self.device() != Device::Cpu {
            return Err(Error::Unsupported(format!(
                "{op}: the tensor is on {}; bring it to the CPU first",
                self.device()
            )));
        }
        Ok(())
    }

    /// The elements as `T`; `T` must be the tensor's dtype.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        self.check_dtype::<T>("Tensor::as_slice")?;
        self.check_on_cpu("Tensor::as_slice")?;
        match &self.buffer {
            Buffer::Owned(b) => Ok(T::view(b).expect("owned buffer variant matches dtype")),
            _ => Ok(bytemuck::cast_slice(self.bytes())),
        }
    }

    /// Mutable elements; a mapped tensor is copied into owned memory first.
    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T]> {
        self.check_dtype::<T>("Tensor::as_mut_slice")?;
        self.check_on_cpu("Tensor::as_mut_slice")?;
        if let Buffer::Mapped { .. } | Buffer::Synthetic(_) = self.buffer {
            self.buffer = Buffer::Owned(OwnedBuffer::from_bytes(self.dtype, self.bytes()));
        }
        match &mut self.buffer {
            Buffer::Owned(b) => Ok(T::view_mut(b).expect("owned buffer variant matches dtype")),
            _ => unreachable!("made owned above; GPU tensors were refused"),
        }
    }

    /// The 32-bit words of an i32 or u32 tensor (AWQ packed weights are stored as int32 but are bit fields).
    pub fn as_u32_bits(&self) -> Result<&[u32]> {
        self.check_on_cpu("Tensor::as_u32_bits")?;
        match self.dtype {
            DType::U32 | DType::I32 => Ok(bytemuck::cast_slice(self.bytes())),
            other => Err(Error::DType {
                op: "Tensor::as_u32_bits",
                expected: DType::I32,
                got: other,
            }),
        }
    }

    fn check_dtype<T: Element>(&self, op: &'static str) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::DType {
                op,
                expected: T::DTYPE,
                got: self.dtype,
            });
        }
        Ok(())
    }

    /// Same elements, new shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        if element_count(shape) != self.elem_count() {
            return Err(Error::shape(
                "Tensor::reshape",
                format!("cannot view {:?} as {shape:?}", self.shape),
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// The values converted to f32 (a copy; for f32 tensors too). A GPU tensor is downloaded.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        if self.device() != Device::Cpu {
            return self.to_device(Device::Cpu)?.to_f32_vec();
        }
        Ok(match self.dtype {
            DType::F32 => self.as_slice::<f32>()?.to_vec(),
            DType::F16 => self.as_slice::<f16>()?.iter().map(|v| v.to_f32()).collect(),
            DType::BF16 => self
                .as_slice::<bf16>()?
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            DType::I32 => self.as_slice::<i32>()?.iter().map(|&v| v as f32).collect(),
            DType::U32 => self.as_slice::<u32>()?.iter().map(|&v| v as f32).collect(),
            DType::U8 => self.as_slice::<u8>()?.iter().map(|&v| v as f32).collect(),
            DType::I64 => self.as_slice::<i64>()?.iter().map(|&v| v as f32).collect(),
        })
    }

    /// A copy on `device` (no copy when it is already there).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        #[cfg(feature = "cuda")]
        {
            let buffer = match (&self.buffer, device) {
                (Buffer::Cuda(b), Device::Cpu) => Buffer::Owned(b.download()?),
                (_, Device::Cuda(ordinal)) => {
                    let gpu = crate::cuda::Gpu::shared_ordinal(ordinal)?;
                    let buffer = match self.unmade_synthetic() {
                        Some((fill, seed)) => crate::cuda::ops::synthetic(
                            &gpu,
                            self.dtype,
                            self.elem_count(),
                            fill,
                            seed,
                        )?,
                        None => crate::cuda::buffer::GpuBuffer::upload(&gpu, self)?,
                    };
                    Buffer::Cuda(Arc::new(buffer))
                }
                _ => unreachable!("CPU to CPU returned above"),
            };
            Ok(Tensor {
                buffer,
                shape: self.shape.clone(),
                dtype: self.dtype,
            })
        }
        #[cfg(not(feature = "cuda"))]
        Err(Error::Unsupported(format!(
            "cannot move a tensor to {device}: this build has no CUDA support (feature `cuda`)"
        )))
    }

    /// The GPU buffer of a GPU tensor.
    #[cfg(feature = "cuda")]
    pub fn gpu_buffer(&self) -> Result<&crate::cuda::buffer::GpuBuffer> {
        match &self.buffer {
            Buffer::Cuda(b) => Ok(b),
            _ => Err(Error::Unsupported("expected a GPU tensor".into())),
        }
    }

    /// The GPU buffer of a GPU tensor, for writing (copied first if another tensor shares it).
    #[cfg(feature = "cuda")]
    pub fn gpu_buffer_mut(&mut self) -> Result<&mut crate::cuda::buffer::GpuBuffer> {
        match &mut self.buffer {
            Buffer::Cuda(b) => {
                if Arc::get_mut(b).is_none() {
                    *b = Arc::new(b.duplicate()?);
                }
                Ok(Arc::get_mut(b).expect("made unique above"))
            }
            _ => Err(Error::Unsupported("expected a GPU tensor".into())),
        }
    }

    /// Wraps a GPU buffer holding `shape` elements of its dtype.
    #[cfg(feature = "cuda")]
    pub fn from_gpu_buffer(
        buffer: crate::cuda::buffer::GpuBuffer,
        shape: &[usize],
    ) -> Result<Tensor> {
        if buffer.len() != element_count(shape) {
            return Err(Error::shape(
                "Tensor::from_gpu_buffer",
                format!("{} elements do not fill shape {shape:?}", buffer.len()),
            ));
        }
        Ok(Tensor {
            dtype: buffer.dtype(),
            buffer: Buffer::Cuda(Arc::new(buffer)),
            shape: shape.to_vec(),
        })
    }

    /// This tensor converted to float `dtype` (no copy when it already is one), on the same device (a cast
    /// kernel on a GPU; the same single rounding as on the host).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        #[cfg(feature = "cuda")]
        if self.device() != Device::Cpu && dtype.is_float() && self.dtype.is_float() {
            return crate::cuda::ops::cast(self, dtype);
        }
        let values = self.to_f32_vec()?;
        let converted = match dtype {
            DType::F32 => Tensor::from_vec(values, &self.shape),
            DType::F16 => {
                Tensor::from_vec(values.into_iter().map(f16::from_f32).collect(), &self.shape)
            }
            DType::BF16 => Tensor::from_vec(
                values.into_iter().map(bf16::from_f32).collect(),
                &self.shape,
            ),
            other => Err(Error::Unsupported(format!(
                "cannot convert a tensor to {other}"
            ))),
        }?;
        // The conversion runs on the host; the result goes back where the tensor was.
        if self.device() == Device::Cpu {
            Ok(converted)
        } else {
            converted.to_device(self.device())
        }
    }

    /// This tensor as an f32 tensor (no copy when it already is one).
    pub fn to_f32(&self) -> Result<Tensor> {
        if self.dtype == DType::F32 {
            return Ok(self.clone());
        }
        Tensor::from_vec(self.to_f32_vec()?, &self.shape)
    }

    /// Rows `start..end` of the first dimension, copied (on the tensor's device).
    pub fn narrow_rows(&self, start: usize, end: usize) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.device() != Device::Cpu {
            return crate::cuda::ops::narrow_rows(self, start, end);
        }
        let rows = *self.shape.first().unwrap_or(&0);
        if start > end || end > rows {
            return Err(Error::shape(
                "Tensor::narrow_rows",
                format!("rows {start}..{end} out of {rows}"),
            ));
        }
        let row_bytes = self.elem_count() / rows.max(1) * self.dtype.size();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        let bytes = &self.bytes()[start * row_bytes..end * row_bytes];
        Ok(Tensor {
            buffer: Buffer::Owned(OwnedBuffer::from_bytes(self.dtype, bytes)),
            shape,
            dtype: self.dtype,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_rejects_a_length_that_does_not_fill_the_shape() {
        assert!(Tensor::from_vec(vec![1.0f32; 5], &[2, 3]).is_err());
    }

    #[test]
    fn as_slice_refuses_the_wrong_element_type() {
        let t = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
        assert!(t.as_slice::<f16>().is_err());
        assert_eq!(t.as_slice::<f32>().unwrap(), &[1.0, 2.0]);
    }

    #[test]
    fn misaligned_shared_bytes_are_copied_and_read_correctly() {
        let mut raw = vec![0u8; 1];
        raw.extend_from_slice(&1.5f32.to_le_bytes());
        raw.extend_from_slice(&(-2.0f32).to_le_bytes());
        let shared: SharedBytes = Arc::new(raw);
        let t = Tensor::from_shared_bytes(shared, 1, 8, DType::F32, &[2]).unwrap();
        assert_eq!(t.as_slice::<f32>().unwrap(), &[1.5, -2.0]);
    }

    #[test]
    fn narrow_rows_copies_the_requested_rows() {
        let t = Tensor::from_vec((0..6).map(|v| v as f32).collect(), &[3, 2]).unwrap();
        let r = t.narrow_rows(1, 3).unwrap();
        assert_eq!(r.shape(), &[2, 2]);
        assert_eq!(r.as_slice::<f32>().unwrap(), &[2.0, 3.0, 4.0, 5.0]);
    }
}
