//! Where the model runs, as a user writes it (`cpu`, `cuda`, `cuda:N`, `auto`), and opening it.

use std::str::FromStr;

use candle_core::Device;

/// A device as named on the command line or in the editor's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    Cpu,
    /// CUDA device N (`cuda` is `cuda:0`).
    Cuda(usize),
    /// CUDA device 0 when this build has CUDA and the GPU answers, else the CPU (saying why in
    /// one log line).
    #[default]
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let not_understood =
            || format!("device `{text}` not understood; use cpu, cuda, cuda:N or auto");
        match text {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(not_understood),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl DeviceChoice {
    /// The device, or why it cannot be had. `Auto` always gives one: the GPU, or the CPU with
    /// an info line that says why not the GPU.
    pub fn open(self) -> Result<Device, String> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => open_cuda(ordinal),
            Self::Auto => Ok(open_cuda(0).unwrap_or_else(|why| {
                tracing::info!("running on the CPU: {why}");
                Device::Cpu
            })),
        }
    }

    /// A model loaded by `load` on the device this choice opens. For `auto`, a load that fails
    /// on the GPU (a model larger than its memory, say) runs again on the CPU, with a warning
    /// that says why: `auto` promises a model that runs, wherever it can.
    pub fn load<T>(self, load: impl Fn(&Device) -> Result<T, String>) -> Result<T, String> {
        let device = self.open()?;
        match load(&device) {
            Err(why) if self.retries_on_the_cpu(&device) => {
                tracing::warn!(
                    "running on the CPU: loading onto {} failed: {why}",
                    device_name(&device)
                );
                load(&Device::Cpu)
            }
            loaded => loaded,
        }
    }

    /// Whether a load that failed on `device` runs again on the CPU: for `auto` on a GPU only
    /// (a load that failed on the CPU would fail again, and `cuda` asks for the GPU).
    fn retries_on_the_cpu(self, device: &Device) -> bool {
        self == Self::Auto && !device.is_cpu()
    }
}

/// How a device a model runs on is named to users ("cpu", "cuda:0"): what `auto` became.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

fn open_cuda(ordinal: usize) -> Result<Device, String> {
    if !candle_core::utils::cuda_is_available() {
        // Whether a GPU is there tells the user if a CUDA build would help (a probe takes no
        // context: nothing is allocated on the GPU).
        let found = match kernels::cuda::driver::Gpu::probe(ordinal) {
            Ok(gpu) => format!("found {} but ", gpu.name),
            Err(_) => String::new(),
        };
        return Err(format!(
            "{found}this build has no CUDA support (build with `cargo build --release --features cuda`)"
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        // candle appends a backtrace when RUST_BACKTRACE is set: the user needs the first line.
        let error = e.to_string();
        let reason = error.lines().next().unwrap_or_default();
        format!("cannot open CUDA device {ordinal}: {reason}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (text, choice) in [
            ("cpu", DeviceChoice::Cpu),
            ("auto", DeviceChoice::Auto),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>(), Ok(choice));
        }
        assert_eq!(DeviceChoice::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda3", "CPU", ""] {
            let error = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(error.contains("cpu, cuda, cuda:N or auto"), "{error}");
        }
    }

    #[test]
    fn only_auto_on_a_gpu_loads_again_on_the_cpu() {
        for choice in [DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda(0)] {
            assert!(!choice.retries_on_the_cpu(&Device::Cpu), "{choice}");
        }
        // On the CPU a failed load is tried once, and its error is the caller's.
        let calls = std::cell::Cell::new(0);
        let failed = DeviceChoice::Cpu.load(|_| -> Result<(), String> {
            calls.set(calls.get() + 1);
            Err("a broken file".into())
        });
        assert_eq!((failed, calls.get()), (Err("a broken file".into()), 1));
    }

    /// A build without CUDA (CI's): `auto` runs on the CPU and `cuda` says how to get CUDA.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn auto_falls_back_to_the_cpu_where_cuda_cannot_run() {
        let device = DeviceChoice::Auto.open().unwrap();
        assert_eq!(device_name(&device), "cpu");
        let error = DeviceChoice::Cuda(0).open().unwrap_err();
        assert!(error.contains("--features cuda"), "{error}");
    }
}
