//! The launcher side of torchrun's contract: one rank process per GPU of this node, each told
//! its place in the group, supervised as a unit (the first to fail takes the others down, so a
//! group never waits on a dead peer).

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// This node's part in a run of `nnodes × nproc_per_node` ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub nnodes: usize,
    pub nproc_per_node: usize,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}")]
    Invalid(String),
    #[error("starting rank {rank}: {source}")]
    Spawn {
        rank: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for rank {rank}: {source}")]
    Wait {
        rank: usize,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "rank {rank} (local rank {local_rank}) failed ({status}); the other ranks of this node were stopped"
    )]
    RankFailed {
        rank: usize,
        local_rank: usize,
        status: String,
    },
}

impl Launch {
    pub fn world_size(&self) -> usize {
        self.nnodes * self.nproc_per_node
    }

    /// Whether this launch is a group at all (more than one rank).
    pub fn is_distributed(&self) -> bool {
        self.world_size() > 1
    }

    pub fn validate(&self) -> Result<(), LaunchError> {
        if self.nnodes == 0 || self.nproc_per_node == 0 {
            return Err(LaunchError::Invalid(format!(
                "nnodes ({}) and nproc-per-node ({}) must be at least 1",
                self.nnodes, self.nproc_per_node
            )));
        }
        if self.node_rank >= self.nnodes {
            return Err(LaunchError::Invalid(format!(
                "node rank {} is not below nnodes {}",
                self.node_rank, self.nnodes
            )));
        }
        if self.is_distributed() && self.master_addr.trim().is_empty() {
            return Err(LaunchError::Invalid(
                "a group of more than one rank needs a master address (MASTER_ADDR)".into(),
            ));
        }
        Ok(())
    }

    /// The environment of this node's local rank `local` (torchrun's variables).
    pub fn rank_env(&self, local: usize) -> Vec<(&'static str, String)> {
        vec![
            ("WORLD_SIZE", self.world_size().to_string()),
            (
                "RANK",
                (self.node_rank * self.nproc_per_node + local).to_string(),
            ),
            ("LOCAL_RANK", local.to_string()),
            ("LOCAL_WORLD_SIZE", self.nproc_per_node.to_string()),
            ("GROUP_RANK", self.node_rank.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
    }
}

fn stop_all(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
    }
    for (_, c) in children.iter_mut() {
        let _ = c.wait();
    }
}

/// Runs `program args` once per local rank with its environment, and waits for all of them.
/// Ok when every rank exits 0; the first failure stops the rest of this node's ranks.
pub fn supervise(launch: &Launch, program: &Path, args: &[OsString]) -> Result<(), LaunchError> {
    launch.validate()?;
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(launch.nproc_per_node);
    for local in 0..launch.nproc_per_node {
        let rank = launch.node_rank * launch.nproc_per_node + local;
        let child = Command::new(program)
            .args(args)
            .envs(launch.rank_env(local))
            .spawn();
        match child {
            Ok(c) => children.push((local, c)),
            Err(source) => {
                stop_all(&mut children);
                return Err(LaunchError::Spawn { rank, source });
            }
        }
    }
    let mut running = children;
    let mut done = Vec::new();
    while !running.is_empty() {
        let mut i = 0;
        while i < running.len() {
            let (local, child) = &mut running[i];
            let local = *local;
            let rank = launch.node_rank * launch.nproc_per_node + local;
            match child.try_wait() {
                Ok(None) => i += 1,
                Ok(Some(status)) if status.success() => done.push(running.swap_remove(i)),
                Ok(Some(status)) => {
                    running.swap_remove(i);
                    stop_all(&mut running);
                    return Err(LaunchError::RankFailed {
                        rank,
                        local_rank: local,
                        status: status.to_string(),
                    });
                }
                Err(source) => {
                    stop_all(&mut running);
                    return Err(LaunchError::Wait { rank, source });
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(nnodes: usize, nproc: usize, node_rank: usize) -> Launch {
        Launch {
            nnodes,
            nproc_per_node: nproc,
            node_rank,
            master_addr: "job-0.job".into(),
            master_port: 29500,
        }
    }

    #[test]
    fn ranks_are_numbered_node_by_node() {
        let l = launch(2, 4, 1);
        let env = l.rank_env(2);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("WORLD_SIZE"), Some("8"));
        assert_eq!(get("RANK"), Some("6"));
        assert_eq!(get("LOCAL_RANK"), Some("2"));
        assert_eq!(get("MASTER_ADDR"), Some("job-0.job"));
        assert!(!launch(1, 1, 0).is_distributed());
    }

    #[test]
    fn refuses_impossible_launches() {
        assert!(launch(2, 1, 2).validate().is_err());
        assert!(launch(0, 1, 0).validate().is_err());
        let mut l = launch(2, 1, 0);
        l.master_addr = String::new();
        assert!(l.validate().is_err());
    }

    #[test]
    fn one_failed_rank_stops_the_others() {
        // Local rank 0 sleeps, rank 1 fails at once: the launch fails naming rank 1, and returns
        // long before the sleeper would have ended.
        let l = launch(1, 2, 0);
        let script = "if [ \"$LOCAL_RANK\" = 0 ]; then exec sleep 600; else exit 3; fi";
        let err = supervise(&l, Path::new("/bin/sh"), &["-c".into(), script.into()])
            .expect_err("rank 1 fails");
        assert!(
            err.to_string().starts_with("rank 1 (local rank 1) failed"),
            "{err}"
        );
        let ok = supervise(&l, Path::new("/bin/sh"), &["-c".into(), "exit 0".into()]);
        assert!(ok.is_ok());
    }
}
