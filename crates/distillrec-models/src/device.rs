//! Opens the device a config or `--device` names. The CPU never depends on
//! the `cuda` feature; a CUDA device in a build without it is a one-line
//! error instead of candle's generic one.

use candle_core::{Device, DeviceLocation};
use distillrec_config::DeviceSpec;

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// CUDA was asked for, but this binary was built without it.
    #[error("device {0}: built without CUDA support; rebuild with --features cuda")]
    NoCuda(DeviceSpec),
    /// The CUDA runtime refused the device (no GPU, bad ordinal, driver).
    #[error("device {spec}: {msg}")]
    Cuda {
        /// The device asked for.
        spec: DeviceSpec,
        /// candle's message, on one line.
        msg: String,
    },
}

/// The candle device for `spec`.
pub fn open(spec: DeviceSpec) -> Result<Device, DeviceError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => open_cuda(spec, n),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(spec: DeviceSpec, ordinal: usize) -> Result<Device, DeviceError> {
    Device::new_cuda(ordinal).map_err(|e| DeviceError::Cuda {
        spec,
        msg: e.to_string().replace('\n', " "),
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(spec: DeviceSpec, _ordinal: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NoCuda(spec))
}

/// The name of an open device, as configs spell it (for `run.json`).
pub fn spec_of(device: &Device) -> DeviceSpec {
    match device.location() {
        DeviceLocation::Cuda { gpu_id } => DeviceSpec::Cuda(gpu_id),
        _ => DeviceSpec::Cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_opens_and_names_itself() {
        let d = open(DeviceSpec::Cpu).unwrap();
        assert!(d.is_cpu());
        assert_eq!(spec_of(&d), DeviceSpec::Cpu);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_one_line_error() {
        let e = open(DeviceSpec::Cuda(1)).unwrap_err().to_string();
        assert_eq!(
            e,
            "device cuda:1: built without CUDA support; rebuild with --features cuda"
        );
    }
}
