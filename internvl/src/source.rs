//! Where a program's InternVL model comes from: a checkpoint folder, a synthetic family member, or the
//! embedded checkpoint; loaded with progress on standard error, then moved to the device. Shared by the
//! `internvl` and `server` programs.

use std::path::Path;

use awq_kernels::Device;

use crate::progress::ProgressPrinter;
use crate::{embedded, synthetic, InternVlModel, Result};

/// The model a program was asked for.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    Dir(&'a Path),
    /// A name of [`synthetic::NAMES`].
    Synthetic(&'a str),
    /// The small embedded checkpoint (random weights).
    Embedded,
}

impl<'a> ModelSource<'a> {
    /// `--synthetic` wins over `--model`; neither means the embedded checkpoint.
    pub fn from_args(dir: Option<&'a Path>, synthetic: Option<&'a str>) -> ModelSource<'a> {
        match (dir, synthetic) {
            (_, Some(name)) => ModelSource::Synthetic(name),
            (Some(dir), None) => ModelSource::Dir(dir),
            (None, None) => ModelSource::Embedded,
        }
    }

    /// Loads the model (saying what on standard error) and moves it to `device`.
    pub fn load(self, device: Device) -> Result<InternVlModel> {
        let model = match self {
            ModelSource::Synthetic(name) => {
                eprintln!("making the synthetic {name} (random weights) ...");
                synthetic::model(name)?
            }
            ModelSource::Dir(dir) => {
                eprintln!("loading {} ...", dir.display());
                let mut printer = ProgressPrinter::stderr();
                InternVlModel::load_with_progress(dir, &mut |p| printer.report(p))?
            }
            ModelSource::Embedded => {
                eprintln!(
                    "no --model given: using the {}",
                    embedded::INTERNVL_DESCRIPTION
                );
                embedded::internvl_model()?
            }
        };
        if device == Device::Cpu {
            return Ok(model);
        }
        eprintln!("moving the model to {device} ...");
        model.to_device(device)
    }

    /// What is loaded, for error messages.
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Dir(dir) => format!("the checkpoint in {}", dir.display()),
            ModelSource::Synthetic(name) => format!("the synthetic {name}"),
            ModelSource::Embedded => "the embedded checkpoint".into(),
        }
    }
}
