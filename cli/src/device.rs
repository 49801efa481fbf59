//! `--device cpu|sim|cuda`: where a training step's ops run.

use autograd::Device;

/// Parses a device name for clap. `cuda` is accepted here; a build or machine that cannot run
/// it reports the typed error of `autograd::Tape::new_on` when the step starts.
pub fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "sim" => Ok(Device::Sim),
        "cuda" => Ok(Device::Cuda),
        _ => Err(format!("`{s}` is not a device (cpu, sim, cuda)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_display() {
        for d in [Device::Cpu, Device::Sim, Device::Cuda] {
            assert_eq!(parse_device(&d.to_string()), Ok(d));
        }
        assert!(parse_device("gpu").unwrap_err().contains("cpu, sim, cuda"));
    }
}
