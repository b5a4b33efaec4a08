//! The profile's op counter (`csrc/ops.cpp`): top-level aten ops dispatched by the host, forward
//! and backward, on every thread, through libtorch's RecordFunction observer. Installed only
//! when profiling, since an observer costs a little on every op.

// The two calls into the bridge.
#![allow(unsafe_code)]

use std::ffi::c_char;
use std::ptr;

use crate::group::take_error;

unsafe extern "C" {
    fn tailor_ops_install(err: *mut *mut c_char) -> i32;
    fn tailor_ops_count() -> u64;
}

/// Starts counting (once per process; later calls do nothing).
pub fn install() -> Result<(), String> {
    let mut err = ptr::null_mut();
    // SAFETY: the bridge writes `err` only on failure, as a string `take_error` frees.
    match unsafe { tailor_ops_install(&mut err) } {
        0 => Ok(()),
        _ => Err(take_error(err)),
    }
}

/// Top-level ops dispatched since [`install`] (0 before it).
pub fn count() -> u64 {
    // SAFETY: reads an atomic counter; no arguments.
    unsafe { tailor_ops_count() }
}
