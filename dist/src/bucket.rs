//! One flat buffer for many small tensors: the adapter's parameters, their gradients and the
//! optimizer's moments each live in one contiguous tensor, and the per-tensor handles the model
//! uses are views into it. A step then clips, updates, zeroes and all-reduces a handful of large
//! tensors instead of a few hundred small ones (on a GPU, each small op is a kernel launch).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void};

use tch::Tensor;

use crate::group::{DistError, take_error};

unsafe extern "C" {
    fn tailor_grad_set(param: *mut c_void, grad: *mut c_void, err: *mut *mut c_char) -> c_int;
}

/// Copies `tensors` (same kind and device) into one flat buffer; returns it and a view of it
/// per tensor, in order and in each tensor's shape.
pub fn flat_views(tensors: &[&Tensor]) -> (Tensor, Vec<Tensor>) {
    let flat = tch::no_grad(|| {
        Tensor::cat(
            &tensors
                .iter()
                .map(|t| t.detach().reshape([-1]))
                .collect::<Vec<_>>(),
            0,
        )
    });
    let views = views_of(&flat, tensors);
    (flat, views)
}

/// Views of `flat` shaped like `tensors`, back to back.
pub fn views_of(flat: &Tensor, tensors: &[&Tensor]) -> Vec<Tensor> {
    let mut offset = 0;
    tensors
        .iter()
        .map(|t| {
            let n = t.numel() as i64;
            let v = flat.narrow(0, offset, n).view(t.size().as_slice());
            offset += n;
            v
        })
        .collect()
}

/// Gives `params` (leaves that require gradients) their gradients as views of one zeroed flat
/// buffer, which is returned: backward accumulates into it, `zero_()` on it zeroes them all.
/// Call after the last `set_requires_grad` (that makes new leaves, without these gradients).
pub fn bucket_grads(params: &[&Tensor]) -> Result<Tensor, DistError> {
    let Some(first) = params.first() else {
        return Ok(Tensor::zeros([0], (tch::Kind::Float, tch::Device::Cpu)));
    };
    let total: i64 = params.iter().map(|p| p.numel() as i64).sum();
    let flat = Tensor::zeros([total], (first.kind(), first.device()));
    for (p, g) in params.iter().zip(views_of(&flat, params)) {
        let mut p = p.shallow_clone();
        let mut g = g;
        let mut err = std::ptr::null_mut();
        // SAFETY: both are tch's at::Tensor*, alive for the call; the parameter's TensorImpl
        // keeps its own reference to the gradient's storage afterwards.
        let rc = unsafe {
            tailor_grad_set(
                p.as_mut_ptr().cast::<c_void>(),
                g.as_mut_ptr().cast::<c_void>(),
                &mut err,
            )
        };
        if rc != 0 {
            return Err(DistError::Collective {
                op: "attaching a gradient buffer",
                message: take_error(err),
            });
        }
    }
    Ok(flat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn backward_accumulates_into_the_bucket() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let b = Tensor::from_slice(&[5.0f32, 6.0]);
        let (flat, views) = flat_views(&[&a, &b]);
        assert_eq!(flat.size(), [6]);
        let params: Vec<Tensor> = views
            .iter()
            .map(|v| v.detach().set_requires_grad(true))
            .collect();
        let refs: Vec<&Tensor> = params.iter().collect();
        let grads = bucket_grads(&refs).expect("bucket");
        for _ in 0..2 {
            ((&params[0] * 2.0).sum(Kind::Float) + (&params[1] * &params[1]).sum(Kind::Float))
                .backward();
        }
        // Two backward passes accumulated, all in the flat buffer.
        let want = Tensor::from_slice(&[4.0f32, 4.0, 4.0, 4.0, 20.0, 24.0]);
        assert!(grads.allclose(&want, 0.0, 0.0, false), "{grads}");
        // Updating the flat parameters updates the views the model holds.
        tch::no_grad(|| {
            let _ = flat.shallow_clone().g_sub_(&grads);
        });
        assert_eq!(params[1].double_value(&[0]), 5.0 - 20.0);
        let _ = grads.shallow_clone().zero_();
        assert_eq!(
            params[0].grad().abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
        let bad = Tensor::zeros([3], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        assert!(bucket_grads(&[&bad, &params[0]]).is_err());
    }
}
