//! The compute layer of internvl-rs: devices, tensors, weights and every op the models need.
//!
//! Every op has a CPU implementation (the reference, and the engine on machines without a GPU). Model crates
//! call ops in model terms; kernel choices are made here from shapes.

pub mod awq_format;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod error;
pub mod kv_cache;
pub mod ops;
pub mod sampling;
pub mod synthetic;
pub mod tensor;
#[doc(hidden)]
pub mod testing;
pub mod weights;

pub use device::Device;
pub use dtype::{DType, Element, FloatElement};
pub use error::{Error, Result};
pub use tensor::Tensor;
pub use weights::{DTypeRule, TensorSpec, WeightFormat, Weights, WeightsScope};
