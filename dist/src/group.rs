//! A c10d process group (Gloo) joined over a TCPStore, through `csrc/dist.cpp`.
// The bridge's functions are C; every call hands over pointers this module owns (the group) or
// borrows for the call's duration (tch's tensors, C strings), and the C++ side catches every
// exception, so nothing unwinds across the boundary.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr::NonNull;
use std::time::Duration;

use tch::Tensor;

use crate::World;

unsafe extern "C" {
    fn tailor_dist_new(
        master_addr: *const c_char,
        port: u16,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        host: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn tailor_dist_all_reduce_sum(
        g: *mut c_void,
        tensor: *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn tailor_dist_broadcast(
        g: *mut c_void,
        tensor: *mut c_void,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn tailor_dist_barrier(g: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn tailor_dist_free(g: *mut c_void);
    fn tailor_dist_free_error(err: *mut c_char);
}

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("joining the group of {size} ranks at {addr}:{port} as rank {rank}: {message}")]
    Join {
        rank: usize,
        size: usize,
        addr: String,
        port: u16,
        message: String,
    },
    #[error("{op} across the group: {message}")]
    Collective { op: &'static str, message: String },
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("{op} needs a contiguous tensor")]
    NotContiguous { op: &'static str },
}

/// Takes the bridge's error text (and frees it).
pub(crate) fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a non-null error is a NUL-terminated string the bridge malloc'd for us.
    let text = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed once, by the bridge's own free.
    unsafe { tailor_dist_free_error(err) };
    text
}

/// The ranks of one data-parallel run, on Gloo.
pub struct ProcessGroup {
    raw: NonNull<c_void>,
    rank: usize,
    size: usize,
}

// SAFETY: c10d's process groups are used from any thread (one at a time here: &mut for
// collectives is not needed as c10d serialises work internally, but the trainer calls them from
// one thread anyway).
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Rendezvous: rank 0 serves the TCPStore on `MASTER_PORT`, every rank connects (retrying
    /// until `timeout`), then Gloo connects the ranks pairwise. `host` is the address this rank's
    /// Gloo transport binds (the pod IP); `None` resolves the hostname, as torch does.
    /// `prefix` keeps the keys of one group apart from another's on the same store.
    pub fn join(
        world: &World,
        prefix: &str,
        host: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, DistError> {
        let addr =
            CString::new(world.master_addr.as_str()).map_err(|_| DistError::Nul("MASTER_ADDR"))?;
        let prefix_c = CString::new(prefix).map_err(|_| DistError::Nul("the rendezvous prefix"))?;
        let host_c = CString::new(host.unwrap_or("")).map_err(|_| DistError::Nul("the host"))?;
        let mut err = std::ptr::null_mut();
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        // SAFETY: all strings outlive the call; `err` is written only on failure.
        let raw = unsafe {
            tailor_dist_new(
                addr.as_ptr(),
                world.master_port,
                world.rank as c_int,
                world.size as c_int,
                timeout_ms,
                prefix_c.as_ptr(),
                host_c.as_ptr(),
                &mut err,
            )
        };
        NonNull::new(raw)
            .map(|raw| ProcessGroup {
                raw,
                rank: world.rank,
                size: world.size,
            })
            .ok_or_else(|| DistError::Join {
                rank: world.rank,
                size: world.size,
                addr: world.master_addr.clone(),
                port: world.master_port,
                message: take_error(err),
            })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    fn call(
        &self,
        op: &'static str,
        f: impl FnOnce(*mut c_void, *mut *mut c_char) -> c_int,
    ) -> Result<(), DistError> {
        let mut err = std::ptr::null_mut();
        match f(self.raw.as_ptr(), &mut err) {
            0 => Ok(()),
            _ => Err(DistError::Collective {
                op,
                message: take_error(err),
            }),
        }
    }

    /// Sums `tensor` over the ranks, in place; every rank ends with the same values.
    pub fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<(), DistError> {
        if !tensor.is_contiguous() {
            return Err(DistError::NotContiguous { op: "all-reduce" });
        }
        let t = tensor.as_mut_ptr().cast::<c_void>();
        // SAFETY: `t` is tch's at::Tensor*, alive and exclusively borrowed for the call.
        self.call("all-reduce", |g, err| unsafe {
            tailor_dist_all_reduce_sum(g, t, err)
        })
    }

    /// Replaces `tensor` on every rank with rank `root`'s.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), DistError> {
        if !tensor.is_contiguous() {
            return Err(DistError::NotContiguous { op: "broadcast" });
        }
        let t = tensor.as_mut_ptr().cast::<c_void>();
        // SAFETY: as for all_reduce_sum.
        self.call("broadcast", |g, err| unsafe {
            tailor_dist_broadcast(g, t, root as c_int, err)
        })
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: the group pointer is ours and alive.
        self.call("barrier", |g, err| unsafe { tailor_dist_barrier(g, err) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by tailor_dist_new, freed once.
        unsafe { tailor_dist_free(self.raw.as_ptr()) }
    }
}
