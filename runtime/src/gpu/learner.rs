//! The GPU learner of an unlearning run: the model, its gradients, SGD's
//! momentum and SalUn's mask resident on the device for the whole run
//! (`unlearn::unlearn_on` with `Device::Gpu`). Per step the host sends the
//! batch and reads the loss (and AGR's per-tensor norms); the parameters
//! come back once an epoch (finiteness, the weight codes that changed) and
//! at the end.

use super::{DeviceModel, DeviceSgd};
use crate::exec::{PassError, Targets};
use crate::model::Model;
use crate::samples::Forward;
use crate::unlearn::{Config, Learner, UnlearnError};
use qmul_kernels::gpu::{Buf, Gpu};

pub struct GpuLearner<'g> {
    dm: DeviceModel<'g>,
    sgd: DeviceSgd,
    mask: Option<Vec<Buf>>,
    grads: Vec<Buf>,
}

impl<'g> GpuLearner<'g> {
    pub fn new(
        gpu: &'g Gpu,
        m: &Model,
        cfg: &Config,
        mask: Option<Vec<Vec<f32>>>,
    ) -> Result<GpuLearner<'g>, UnlearnError> {
        let dm = DeviceModel::upload(gpu, m)?;
        let sgd = DeviceSgd::new(&dm, cfg.lr, cfg.momentum, cfg.weight_decay)?;
        let mask = match mask {
            Some(m) => Some(
                m.iter()
                    .map(|t| gpu.upload_f32(t))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(PassError::from)?,
            ),
            None => None,
        };
        Ok(GpuLearner {
            dm,
            sgd,
            mask,
            grads: Vec::new(),
        })
    }

    fn grads(&self) -> Result<&[Buf], UnlearnError> {
        if self.grads.is_empty() {
            return Err(UnlearnError::Invalid("no training pass yet".into()));
        }
        Ok(&self.grads)
    }
}

impl Forward for GpuLearner<'_> {
    fn logits(&self, images: &[u8], n: usize) -> Result<Vec<f32>, PassError> {
        self.dm.forward(images, n)
    }
    fn classes(&self) -> usize {
        self.dm.model().classes()
    }
    fn input_shape(&self) -> crate::graph::Shape {
        self.dm.model().graph.input_shape()
    }
}

impl Learner for GpuLearner<'_> {
    fn pass(
        &mut self,
        images: &[u8],
        n: usize,
        t: Targets,
        update_running: bool,
    ) -> Result<f32, UnlearnError> {
        let p = self.dm.train_pass(images, n, t, update_running)?;
        self.grads = p.grads;
        Ok(p.loss)
    }

    fn grad_norm_sum(&self) -> Result<f64, UnlearnError> {
        Ok(self.dm.grad_norm_sum(self.grads()?)?)
    }

    fn add_l1(&mut self, gamma: f32) -> Result<(), UnlearnError> {
        Ok(self.dm.add_l1(self.grads()?, gamma)?)
    }

    fn step(&mut self, lr: f32) -> Result<(), UnlearnError> {
        if self.grads.is_empty() {
            return Err(UnlearnError::Invalid("no training pass yet".into()));
        }
        self.sgd.lr = lr;
        self.sgd
            .step(&mut self.dm, &self.grads, self.mask.as_deref())?;
        Ok(())
    }

    fn nonfinite_param(&self) -> Result<Option<String>, UnlearnError> {
        Ok(self.dm.params_finite()?)
    }

    fn weight_codes(&self) -> Result<Vec<Vec<i8>>, UnlearnError> {
        Ok(self.dm.to_model()?.weight_codes())
    }

    fn into_model(self: Box<Self>) -> Result<Model, UnlearnError> {
        Ok(self.dm.to_model()?)
    }
}
