//! Container processes on the host, and how they are stopped for good.
//!
//! A container is a process group (its main process leads it) and, where pods get mount
//! namespaces, a mount namespace of its own. Its processes may leave the group (`setsid`, a
//! daemon's double fork) but not the namespace, so killing a container kills every process in
//! its namespace as well as its group, as a container runtime kills a container's cgroup. Each
//! container's pid, start time and namespace are recorded in its pod directory, so the next
//! start after a crash can find them.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// One container's processes on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// The main process, leader of the container's process group.
    pub pid: i32,
    /// Its start time: with the pid it names one process for good, as pids are reused.
    pub start: u64,
    /// The mount namespace (inode) every process of the container lives in, once known.
    pub mnt_ns: Option<u64>,
}

impl Tracked {
    /// `pid start [mnt_ns]`, as recorded in the pod directory.
    pub fn record(&self) -> String {
        match self.mnt_ns {
            Some(ns) => format!("{} {} {ns}", self.pid, self.start),
            None => format!("{} {}", self.pid, self.start),
        }
    }

    pub fn parse(s: &str) -> Option<Tracked> {
        let mut it = s.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start = it.next()?.parse().ok()?;
        let mnt_ns = it.next().and_then(|n| n.parse().ok());
        (pid > 0).then_some(Tracked { pid, start, mnt_ns })
    }

    /// Whether its main process still runs (not a later process that reused the pid).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// When a process started, in clock ticks since boot (`/proc/PID/stat` field 22); None for a
/// process that is gone (or a zombie).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The mount namespace of a process (the inode in `/proc/PID/ns/mnt`).
pub fn mount_ns(pid: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
    let s = link.to_string_lossy();
    s.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok()
}

/// The mount namespace a freshly started container moves into (it starts in ours and
/// `unshare`s): polled briefly; None if it does not move (no namespaces) or exits first.
pub async fn container_mount_ns(pid: i32) -> Option<u64> {
    let ours = mount_ns(std::process::id() as i32)?;
    for _ in 0..400 {
        match mount_ns(pid) {
            Some(ns) if ns != ours => return Some(ns),
            Some(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            None => return None,
        }
    }
    None
}

/// Every live process in mount namespace `ns`.
fn in_namespace(ns: u64) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| mount_ns(*pid) == Some(ns))
        .collect()
}

/// Send `sig` to a container's process group (its main process and what it started).
pub fn signal_group(pid: i32, sig: Signal) {
    if pid > 0 {
        let _ = killpg(Pid::from_raw(pid), sig);
    }
}

/// SIGKILL every process of a container: its group and everything in its mount namespace.
/// Never our own namespace (a container whose namespace was not recorded).
pub fn kill_all(t: &Tracked) {
    signal_group(t.pid, Signal::SIGKILL);
    let ours = mount_ns(std::process::id() as i32);
    if let Some(ns) = t.mnt_ns.filter(|ns| Some(*ns) != ours) {
        for pid in in_namespace(ns) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Whether any process of a container is left.
pub fn any_left(t: &Tracked) -> bool {
    let ours = mount_ns(std::process::id() as i32);
    t.alive()
        || t.mnt_ns
            .filter(|ns| Some(*ns) != ours)
            .is_some_and(|ns| !in_namespace(ns).is_empty())
}

/// Stop a container as the kubelet does: SIGTERM to its group, SIGKILL to all of it after the
/// grace period (at once for a grace of 0). Returns the main process' exit status; every
/// process of the container is gone when it returns.
pub async fn terminate(
    child: &mut tokio::process::Child,
    t: &Tracked,
    grace: i64,
) -> Option<std::process::ExitStatus> {
    if grace <= 0 {
        kill_all(t);
    } else {
        signal_group(t.pid, Signal::SIGTERM);
    }
    let status =
        match tokio::time::timeout(Duration::from_secs(grace.max(0) as u64), child.wait()).await {
            Ok(s) => s.ok(),
            Err(_) => {
                kill_all(t);
                child.wait().await.ok()
            }
        };
    // What the main process left behind goes with it, as with a container's cgroup.
    kill_all(t);
    status
}

/// Kill the containers recorded under `state` (each pod's `pids/` directory) that still run, and
/// wait (up to five seconds) until they are gone: the start after a crash does this for what the
/// dead tailor-sim left, as a node reboot would, so their pods start again on the same IPs and
/// ports; the shutdown does it last, so that nothing outlives the simulator.
pub fn kill_recorded_containers(state: &Path, forget: bool) {
    let mut left = vec![];
    for pod in std::fs::read_dir(state.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(pod.path().join("pids"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let rec = std::fs::read_to_string(f.path()).unwrap_or_default();
            if forget {
                let _ = std::fs::remove_file(f.path());
            }
            let Some(t) = Tracked::parse(&rec) else {
                continue;
            };
            if any_left(&t) {
                tracing::info!(pid = t.pid, pod = ?pod.file_name(), "killing a container left running");
                kill_all(&t);
                left.push(t);
            }
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while left.iter().any(any_left) && std::time::Instant::now() < deadline {
        for t in &left {
            kill_all(t);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a program name is found on PATH.
pub fn which(prog: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(prog).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_and_without_a_namespace() {
        for t in [
            Tracked {
                pid: 42,
                start: 7,
                mnt_ns: Some(4026531840),
            },
            Tracked {
                pid: 42,
                start: 7,
                mnt_ns: None,
            },
        ] {
            assert_eq!(Tracked::parse(&t.record()), Some(t));
        }
        assert_eq!(Tracked::parse("0 7"), None);
        assert_eq!(Tracked::parse("x"), None);
    }

    #[test]
    fn this_process_has_a_start_time_and_a_namespace() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert!(mount_ns(me).is_some());
    }
}
