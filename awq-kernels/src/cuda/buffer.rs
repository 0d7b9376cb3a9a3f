//! Device memory of a GPU tensor: a typed cudarc allocation and the GPU it lives on.
//! (cudarc frees through the stream-ordered allocator when the driver has it, so steady-state decode
//! allocations come from the driver's pool rather than cudaMalloc.)

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};

use super::{cuda_error, Gpu};
use crate::dtype::OwnedBuffer;
use crate::{DType, Element, Error, Result, Tensor};

/// A typed device allocation.
pub enum GpuData {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
    I32(CudaSlice<i32>),
    U32(CudaSlice<u32>),
    U8(CudaSlice<u8>),
}

pub struct GpuBuffer {
    pub gpu: Arc<Gpu>,
    pub data: GpuData,
}

/// Element types that live on the GPU, with access to the matching [`GpuData`] variant.
pub trait GpuElement: Element + DeviceRepr + ValidAsZeroBits {
    fn wrap_gpu(slice: CudaSlice<Self>) -> GpuData;
    fn gpu_slice(data: &GpuData) -> Option<&CudaSlice<Self>>;
    fn gpu_slice_mut(data: &mut GpuData) -> Option<&mut CudaSlice<Self>>;
}

macro_rules! gpu_element {
    ($t:ty, $variant:ident) => {
        impl GpuElement for $t {
            fn wrap_gpu(slice: CudaSlice<Self>) -> GpuData {
                GpuData::$variant(slice)
            }
            fn gpu_slice(data: &GpuData) -> Option<&CudaSlice<Self>> {
                match data {
                    GpuData::$variant(s) => Some(s),
                    _ => None,
                }
            }
            fn gpu_slice_mut(data: &mut GpuData) -> Option<&mut CudaSlice<Self>> {
                match data {
                    GpuData::$variant(s) => Some(s),
                    _ => None,
                }
            }
        }
    };
}
gpu_element!(f32, F32);
gpu_element!(f16, F16);
gpu_element!(bf16, BF16);
gpu_element!(i32, I32);
gpu_element!(u32, U32);
gpu_element!(u8, U8);

static POISON_OUTPUTS: AtomicBool = AtomicBool::new(false);

/// Tests turn this on so that every op output starts as NaN (all bits set): an element a kernel forgets to
/// write then shows up instead of hiding as a zero.
pub fn poison_outputs(on: bool) {
    POISON_OUTPUTS.store(on, Ordering::Relaxed);
}

impl GpuBuffer {
    /// A buffer for an op to write all of: left uninitialized (no memset launch per op in the decode loop),
    /// or NaN-filled when [`poison_outputs`] is on, which is how the GPU tests check that every op writes
    /// every element of its output.
    pub fn output(gpu: &Arc<Gpu>, dtype: DType, len: usize) -> Result<GpuBuffer> {
        if !POISON_OUTPUTS.load(Ordering::Relaxed) {
            return GpuBuffer::uninit(gpu, dtype, len);
        }
        let mut b = GpuBuffer::zeros(gpu, dtype, len)?;
        if len > 0 {
            let stream = Arc::clone(gpu.stream());
            let bytes = len * dtype.size();
            let (ptr, _sync) = match &mut b.data {
                GpuData::F32(d) => d.device_ptr_mut(&stream),
                GpuData::F16(d) => d.device_ptr_mut(&stream),
                GpuData::BF16(d) => d.device_ptr_mut(&stream),
                GpuData::I32(d) => d.device_ptr_mut(&stream),
                GpuData::U32(d) => d.device_ptr_mut(&stream),
                GpuData::U8(d) => d.device_ptr_mut(&stream),
            };
            // SAFETY: `ptr` addresses exactly `bytes` bytes of this allocation, on this stream.
            unsafe {
                cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, stream.cu_stream())
            }
            .map_err(|e| cuda_error("poisoning an output", e))?;
        }
        Ok(b)
    }

    /// A buffer of `len` elements whose contents are whatever the memory held.
    fn uninit(gpu: &Arc<Gpu>, dtype: DType, len: usize) -> Result<GpuBuffer> {
        GpuBuffer::allocate(gpu, dtype, len, false)
    }

    /// A zero-filled buffer of `len` elements.
    pub fn zeros(gpu: &Arc<Gpu>, dtype: DType, len: usize) -> Result<GpuBuffer> {
        GpuBuffer::allocate(gpu, dtype, len, true)
    }

    fn allocate(gpu: &Arc<Gpu>, dtype: DType, len: usize, zeroed: bool) -> Result<GpuBuffer> {
        let s = gpu.stream();
        let e = |err| cuda_error("allocating device memory", err);
        macro_rules! slice {
            ($t:ty) => {
                if zeroed {
                    s.alloc_zeros::<$t>(len)
                } else {
                    // SAFETY: only `output` asks for unzeroed memory, and its callers write all `len`
                    // elements on the stream before anything reads them (the poisoned GPU tests check
                    // that), so no value of the old contents is ever observed.
                    unsafe { s.alloc::<$t>(len) }
                }
                .map_err(e)?
            };
        }
        let data = match dtype {
            DType::F32 => GpuData::F32(slice!(f32)),
            DType::F16 => GpuData::F16(slice!(f16)),
            DType::BF16 => GpuData::BF16(slice!(bf16)),
            DType::I32 => GpuData::I32(slice!(i32)),
            DType::U32 => GpuData::U32(slice!(u32)),
            DType::U8 => GpuData::U8(slice!(u8)),
            DType::I64 => {
                return Err(Error::Unsupported(
                    "i64 tensors stay on the CPU (no GPU op takes them)".into(),
                ))
            }
        };
        Ok(GpuBuffer {
            gpu: Arc::clone(gpu),
            data,
        })
    }

    /// Copies host elements to a new device buffer.
    pub fn from_slice<T: GpuElement>(gpu: &Arc<Gpu>, host: &[T]) -> Result<GpuBuffer> {
        let slice = gpu
            .stream()
            .clone_htod(host)
            .map_err(|e| cuda_error("copying to the GPU", e))?;
        Ok(GpuBuffer {
            gpu: Arc::clone(gpu),
            data: T::wrap_gpu(slice),
        })
    }

    /// Copies a CPU tensor to the GPU.
    pub fn upload(gpu: &Arc<Gpu>, t: &Tensor) -> Result<GpuBuffer> {
        match t.dtype() {
            DType::F32 => GpuBuffer::from_slice(gpu, t.as_slice::<f32>()?),
            DType::F16 => GpuBuffer::from_slice(gpu, t.as_slice::<f16>()?),
            DType::BF16 => GpuBuffer::from_slice(gpu, t.as_slice::<bf16>()?),
            DType::I32 => GpuBuffer::from_slice(gpu, t.as_slice::<i32>()?),
            DType::U32 => GpuBuffer::from_slice(gpu, t.as_slice::<u32>()?),
            DType::U8 => GpuBuffer::from_slice(gpu, t.as_slice::<u8>()?),
            DType::I64 => Err(Error::Unsupported(
                "i64 tensors stay on the CPU (no GPU op takes them)".into(),
            )),
        }
    }

    /// Copies the buffer back to host memory.
    pub fn download(&self) -> Result<OwnedBuffer> {
        let s = self.gpu.stream();
        let e = |err| cuda_error("copying from the GPU", err);
        Ok(match &self.data {
            GpuData::F32(d) => OwnedBuffer::F32(s.clone_dtoh(d).map_err(e)?),
            GpuData::F16(d) => OwnedBuffer::F16(s.clone_dtoh(d).map_err(e)?),
            GpuData::BF16(d) => OwnedBuffer::BF16(s.clone_dtoh(d).map_err(e)?),
            GpuData::I32(d) => OwnedBuffer::I32(s.clone_dtoh(d).map_err(e)?),
            GpuData::U32(d) => OwnedBuffer::U32(s.clone_dtoh(d).map_err(e)?),
            GpuData::U8(d) => OwnedBuffer::U8(s.clone_dtoh(d).map_err(e)?),
        })
    }

    /// A device-side copy.
    pub fn duplicate(&self) -> Result<GpuBuffer> {
        let s = self.gpu.stream();
        let e = |err| cuda_error("copying on the GPU", err);
        let data = match &self.data {
            GpuData::F32(d) => GpuData::F32(s.clone_dtod(d).map_err(e)?),
            GpuData::F16(d) => GpuData::F16(s.clone_dtod(d).map_err(e)?),
            GpuData::BF16(d) => GpuData::BF16(s.clone_dtod(d).map_err(e)?),
            GpuData::I32(d) => GpuData::I32(s.clone_dtod(d).map_err(e)?),
            GpuData::U32(d) => GpuData::U32(s.clone_dtod(d).map_err(e)?),
            GpuData::U8(d) => GpuData::U8(s.clone_dtod(d).map_err(e)?),
        };
        Ok(GpuBuffer {
            gpu: Arc::clone(&self.gpu),
            data,
        })
    }

    pub fn dtype(&self) -> DType {
        match &self.data {
            GpuData::F32(_) => DType::F32,
            GpuData::F16(_) => DType::F16,
            GpuData::BF16(_) => DType::BF16,
            GpuData::I32(_) => DType::I32,
            GpuData::U32(_) => DType::U32,
            GpuData::U8(_) => DType::U8,
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            GpuData::F32(d) => d.len(),
            GpuData::F16(d) => d.len(),
            GpuData::BF16(d) => d.len(),
            GpuData::I32(d) => d.len(),
            GpuData::U32(d) => d.len(),
            GpuData::U8(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The typed allocation; `T` must be the buffer's dtype.
    pub fn slice<T: GpuElement>(&self) -> Result<&CudaSlice<T>> {
        let dtype = self.dtype();
        T::gpu_slice(&self.data).ok_or(Error::DType {
            op: "GpuBuffer::slice",
            expected: T::DTYPE,
            got: dtype,
        })
    }

    pub fn slice_mut<T: GpuElement>(&mut self) -> Result<&mut CudaSlice<T>> {
        let dtype = self.dtype();
        T::gpu_slice_mut(&mut self.data).ok_or(Error::DType {
            op: "GpuBuffer::slice_mut",
            expected: T::DTYPE,
            got: dtype,
        })
    }

    pub fn view<T: GpuElement>(&self) -> Result<CudaView<'_, T>> {
        Ok(self.slice::<T>()?.as_view())
    }

    pub fn view_mut<T: GpuElement>(&mut self) -> Result<CudaViewMut<'_, T>> {
        Ok(self.slice_mut::<T>()?.as_view_mut())
    }
}
