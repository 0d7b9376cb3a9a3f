//! Element types a tensor can hold, and the float element trait the CPU kernels are generic over.

use half::{bf16, f16};

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    U32,
    U8,
    /// Some checkpoints store int64 buffers (PyTorch's default integer type).
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// The safetensors name of this dtype, as it appears in a file header.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::U8 => "U8",
            DType::I64 => "I64",
        }
    }

    /// The dtype of a safetensors dtype name (`F32`, `BF16`, `I64`, ...), if this project computes with it.
    pub fn from_safetensors_name(name: &str) -> Option<DType> {
        [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::I32,
            DType::U32,
            DType::U8,
            DType::I64,
        ]
        .into_iter()
        .find(|d| d.safetensors_name() == name)
    }

    /// Parses the `torch_dtype` / `dtype` strings of an HF `config.json`.
    pub fn from_torch_name(name: &str) -> Option<DType> {
        match name.trim_start_matches("torch.") {
            "float32" | "float" => Some(DType::F32),
            "float16" | "half" => Some(DType::F16),
            "bfloat16" => Some(DType::BF16),
            "int32" => Some(DType::I32),
            "uint8" => Some(DType::U8),
            "int64" | "long" => Some(DType::I64),
            _ => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::U8 => "u8",
            DType::I64 => "i64",
        };
        f.write_str(name)
    }
}

/// A plain-old-data element with a [`DType`].
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    const DTYPE: DType;
    /// Wraps an owned vector into the typed buffer of a tensor.
    fn wrap(data: Vec<Self>) -> OwnedBuffer;
    /// Views a typed buffer as this element type, if the types match.
    fn view(buffer: &OwnedBuffer) -> Option<&[Self]>;
    fn view_mut(buffer: &mut OwnedBuffer) -> Option<&mut [Self]>;
}

/// The owned storage of a CPU tensor: a vector of its element type (so its alignment is right).
#[derive(Debug, Clone)]
pub enum OwnedBuffer {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    U8(Vec<u8>),
    I64(Vec<i64>),
}

impl OwnedBuffer {
    pub fn bytes(&self) -> &[u8] {
        match self {
            OwnedBuffer::F32(v) => bytemuck::cast_slice(v),
            OwnedBuffer::F16(v) => bytemuck::cast_slice(v),
            OwnedBuffer::BF16(v) => bytemuck::cast_slice(v),
            OwnedBuffer::I32(v) => bytemuck::cast_slice(v),
            OwnedBuffer::U32(v) => bytemuck::cast_slice(v),
            OwnedBuffer::U8(v) => v,
            OwnedBuffer::I64(v) => bytemuck::cast_slice(v),
        }
    }

    /// A zero-filled buffer of `len` elements of `dtype`.
    pub fn zeros(dtype: DType, len: usize) -> OwnedBuffer {
        match dtype {
            DType::F32 => OwnedBuffer::F32(vec![0.0; len]),
            DType::F16 => OwnedBuffer::F16(vec![f16::ZERO; len]),
            DType::BF16 => OwnedBuffer::BF16(vec![bf16::ZERO; len]),
            DType::I32 => OwnedBuffer::I32(vec![0; len]),
            DType::U32 => OwnedBuffer::U32(vec![0; len]),
            DType::U8 => OwnedBuffer::U8(vec![0; len]),
            DType::I64 => OwnedBuffer::I64(vec![0; len]),
        }
    }

    /// Copies raw little-endian bytes (of any alignment) into a typed buffer.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> OwnedBuffer {
        let mut out = OwnedBuffer::zeros(dtype, bytes.len() / dtype.size());
        let dst: &mut [u8] = match &mut out {
            OwnedBuffer::F32(v) => bytemuck::cast_slice_mut(v),
            OwnedBuffer::F16(v) => bytemuck::cast_slice_mut(v),
            OwnedBuffer::BF16(v) => bytemuck::cast_slice_mut(v),
            OwnedBuffer::I32(v) => bytemuck::cast_slice_mut(v),
            OwnedBuffer::U32(v) => bytemuck::cast_slice_mut(v),
            OwnedBuffer::U8(v) => v,
            OwnedBuffer::I64(v) => bytemuck::cast_slice_mut(v),
        };
        dst.copy_from_slice(&bytes[..dst.len()]);
        out
    }
}

/// A float element the CPU kernels read and upcast to f32 (weights are stored as f32, f16 or bf16).
pub trait FloatElement: Element + Copy {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

macro_rules! element {
    ($t:ty, $d:expr, $variant:ident) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            fn wrap(data: Vec<Self>) -> OwnedBuffer {
                OwnedBuffer::$variant(data)
            }
            fn view(buffer: &OwnedBuffer) -> Option<&[Self]> {
                match buffer {
                    OwnedBuffer::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn view_mut(buffer: &mut OwnedBuffer) -> Option<&mut [Self]> {
                match buffer {
                    OwnedBuffer::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
element!(f32, DType::F32, F32);
element!(f16, DType::F16, F16);
element!(bf16, DType::BF16, BF16);
element!(i32, DType::I32, I32);
element!(u32, DType::U32, U32);
element!(u8, DType::U8, U8);
element!(i64, DType::I64, I64);

impl FloatElement for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl FloatElement for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl FloatElement for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}
