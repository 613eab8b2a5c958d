//! Where a session's unlearning trains: the CPU, or a GPU (feature `gpu`)
//! holding the model, its gradients and SGD's state for the whole run.

/// A device an unlearning run trains on.
#[derive(Clone, Default)]
pub enum Device {
    #[default]
    Cpu,
    #[cfg(feature = "gpu")]
    Gpu(std::sync::Arc<qmul_kernels::gpu::Gpu>),
}

impl Device {
    /// How the device describes itself.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => format!("cpu ({} kernels)", qmul_kernels::active().name),
            #[cfg(feature = "gpu")]
            Device::Gpu(g) => g.name().to_string(),
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
