//! `TAILOR_PROFILE=1`: where a training step's time goes, phase by phase.
//!
//! Code marks the end of each phase with [`phase`]; the time since the previous mark is added to
//! that phase. On a GPU the mark first waits for the device (kernels are asynchronous, so without
//! it the time lands wherever the host next syncs): profiling changes what it measures a little,
//! which is why it is off unless asked for. Host syncs the training path makes on purpose (a
//! value read back to the host) are counted with [`sync`]. Off, every call is one relaxed load.
//!
//! Given an op counter ([`count_ops_with`]; the trainer installs libtorch's, see `tailor-dist`),
//! each phase also gets the number of ops the host dispatched in it.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tch::Device;

/// Whether `TAILOR_PROFILE` is set to something other than `0`/empty.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("TAILOR_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// Where op counts come from, once set.
static OP_COUNTER: OnceLock<fn() -> u64> = OnceLock::new();

/// Counts each phase's ops with `counter` (ops dispatched so far, monotonic). First call wins.
pub fn count_ops_with(counter: fn() -> u64) {
    let _ = OP_COUNTER.set(counter);
}

fn ops_so_far() -> u64 {
    OP_COUNTER.get().map_or(0, |count| count())
}

#[derive(Default)]
struct Recorder {
    last: Option<Instant>,
    /// The op counter at the last mark.
    last_ops: u64,
    phases: Vec<Phase>,
    syncs: u64,
    device: Option<Device>,
}

thread_local! {
    static RECORDER: RefCell<Recorder> = RefCell::new(Recorder::default());
}

/// Starts a step's measurement on `device` (clears what was recorded).
pub fn start(device: Device) {
    if !enabled() {
        return;
    }
    wait_for(device);
    RECORDER.with_borrow_mut(|r| {
        *r = Recorder {
            last: Some(Instant::now()),
            last_ops: ops_so_far(),
            device: Some(device),
            ..Recorder::default()
        }
    });
}

fn wait_for(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Ends phase `name`: the time since the last mark is added to it.
pub fn phase(name: &'static str) {
    if !enabled() {
        return;
    }
    RECORDER.with_borrow_mut(|r| {
        if let Some(d) = r.device {
            wait_for(d);
        }
        let now = Instant::now();
        let spent = r.last.map_or(Duration::ZERO, |l| now - l);
        r.last = Some(now);
        let ops_now = ops_so_far();
        let ops = ops_now.saturating_sub(r.last_ops);
        r.last_ops = ops_now;
        match r.phases.iter_mut().find(|p| p.name == name) {
            Some(p) => {
                p.time += spent;
                p.ops += ops;
            }
            None => r.phases.push(Phase {
                name,
                time: spent,
                ops,
            }),
        }
    });
}

/// Counts one deliberate host sync (a device value read on the host).
pub fn sync() {
    if enabled() {
        RECORDER.with_borrow_mut(|r| r.syncs += 1);
    }
}

/// One phase of a step: its time and the ops dispatched in it (0 without an op counter).
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub name: &'static str,
    pub time: Duration,
    pub ops: u64,
}

/// What one step recorded: its phases in first-seen order, and the host syncs counted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    pub phases: Vec<Phase>,
    pub syncs: u64,
}

/// Takes what was recorded since [`start`].
pub fn take() -> Step {
    RECORDER.with_borrow_mut(|r| Step {
        phases: std::mem::take(&mut r.phases),
        syncs: std::mem::take(&mut r.syncs),
    })
}
