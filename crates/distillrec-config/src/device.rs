//! Where models run: `device = "cpu"` (the default) or `"cuda"` /
//! `"cuda:N"` in the config, `--device` on the command line. This crate
//! only names the device (it has no tensor library); `distillrec-models`
//! opens it, and refuses CUDA in a build without the `cuda` feature.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A device choice: the CPU or the CUDA GPU with the given ordinal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The CPU (default; never needs the `cuda` feature).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` = `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    /// `cpu`, `cuda` or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("'{s}' is not a device; expected cpu, cuda or cuda:N");
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceSpec::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        assert_eq!(DeviceSpec::Cpu.to_string(), "cpu");
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains(&format!("'{bad}' is not a device")), "{e}");
        }
    }

    #[test]
    fn config_key_defaults_to_cpu_and_names_itself_when_wrong() {
        let c = crate::Config::from_toml_str("", "t.toml", &[]).unwrap();
        assert_eq!(c.device, DeviceSpec::Cpu);
        assert!(c.to_toml().contains("device = \"cpu\""));
        let c = crate::Config::from_toml_str("device = \"cuda:1\"\n", "t.toml", &[]).unwrap();
        assert_eq!(c.device, DeviceSpec::Cuda(1));
        let e = crate::Config::from_toml_str("", "t.toml", &["device=gpu".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml: config key `device`: 'gpu' is not a device"),
            "{e}"
        );
    }
}
