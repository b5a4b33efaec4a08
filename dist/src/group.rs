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
        listen_addr: *const c_char,
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
    /// Rendezvous: rank 0 serves the TCPStore on `MASTER_PORT` at [`World::listen_addr`] only,
    /// every rank connects (retrying until `timeout`), then Gloo connects the ranks pairwise.
    /// `host` is the address this rank's Gloo transport binds (the pod IP); `None` resolves the
    /// hostname, as torch does.
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
        let listen_c = CString::new(world.listen_addr(host))
            .map_err(|_| DistError::Nul("the rendezvous address"))?;
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
                listen_c.as_ptr(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    /// The LISTEN sockets on `port`, as `(hex address, ipv6)` from /proc/net/tcp{,6}.
    fn listening_on(port: u16) -> Vec<(String, bool)> {
        let mut found = Vec::new();
        for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
            let table = std::fs::read_to_string(file).unwrap_or_default();
            for line in table.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let Some((addr, p)) = cols.get(1).and_then(|a| a.split_once(':')) else {
                    continue;
                };
                if cols.get(3) == Some(&"0A") && u16::from_str_radix(p, 16) == Ok(port) {
                    found.push((addr.to_string(), v6));
                }
            }
        }
        found
    }

    fn world(rank: usize, addr: &str, port: u16) -> World {
        World {
            rank,
            local_rank: rank,
            size: 2,
            master_addr: addr.into(),
            master_port: port,
        }
    }

    #[test]
    fn the_rendezvous_listens_on_the_master_address_alone_and_the_group_works() {
        let port = free_port();
        let timeout = Duration::from_secs(60);
        let rank0 = std::thread::spawn(move || {
            ProcessGroup::join(&world(0, "127.0.0.1", port), "t", None, timeout)
        });
        // Rank 0 waits for its peer with the store listening: on 127.0.0.1, not every address.
        let deadline = std::time::Instant::now() + timeout;
        let mut sockets = listening_on(port);
        while sockets.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            sockets = listening_on(port);
        }
        assert_eq!(
            sockets,
            vec![("0100007F".to_string(), false)],
            "port {port}"
        );

        let rank1 = ProcessGroup::join(&world(1, "127.0.0.1", port), "t", None, timeout)
            .expect("rank 1 joins");
        let rank0 = rank0.join().expect("rank 0 thread").expect("rank 0 joins");
        let sum = std::thread::spawn(move || {
            let mut t = Tensor::from_slice(&[1.0f32, 2.0]);
            rank0
                .all_reduce_sum(&mut t)
                .map(|()| Vec::<f32>::try_from(&t))
        });
        let mut t = Tensor::from_slice(&[10.0f32, 20.0]);
        rank1.all_reduce_sum(&mut t).expect("all-reduce");
        assert_eq!(Vec::<f32>::try_from(&t).expect("values"), [11.0, 22.0]);
        let other = sum.join().expect("thread").expect("all-reduce");
        assert_eq!(other.expect("values"), [11.0, 22.0]);
    }

    #[test]
    fn a_master_address_not_on_this_host_is_named_in_the_error() {
        // 192.0.2.1 (TEST-NET-1) is never an address of this host: rank 0 cannot serve there.
        let port = free_port();
        let err = ProcessGroup::join(
            &world(0, "192.0.2.1", port),
            "t",
            None,
            Duration::from_secs(5),
        )
        .err()
        .expect("no group")
        .to_string();
        assert!(
            err.contains(&format!("listening for the rendezvous on 192.0.2.1:{port}")),
            "{err}"
        );
    }
}
