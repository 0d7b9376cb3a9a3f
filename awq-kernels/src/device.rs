//! Where a tensor lives and where an op runs.

/// A compute device. Every op dispatches on the device of its inputs. `Cuda` tensors exist only in builds
/// with the `cuda` feature; elsewhere asking for one is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A GPU by ordinal.
    Cuda(usize),
}

impl Device {
    /// Parses a command-line device name.
    pub fn parse(name: &str) -> crate::Result<Device> {
        match name {
            "cpu" => Ok(Device::Cpu),
            "cuda" if cfg!(feature = "cuda") => Ok(Device::Cuda(0)),
            "cuda" => Err(crate::Error::Unsupported(
                "this build has no CUDA support; build with `--features cuda`, or use --device cpu"
                    .into(),
            )),
            other => Err(crate::Error::Unsupported(format!(
                "unknown device `{other}`; expected `cpu` or `cuda`"
            ))),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
