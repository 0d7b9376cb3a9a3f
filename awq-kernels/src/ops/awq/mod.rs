//! The AWQ W4A16 linear, computed straight from the packed AutoAWQ GEMM layout (see `crate::awq_format`).
//! Layers use it through [`crate::ops::linear::Linear::Awq`].

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod plan;
#[cfg(feature = "cuda")]
pub mod tune;
