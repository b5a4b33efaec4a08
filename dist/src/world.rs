//! torchrun's environment contract, read and checked.

use std::collections::HashMap;

/// Where this process stands in a data-parallel group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub local_rank: usize,
    pub size: usize,
    pub master_addr: String,
    pub master_port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorldError {
    #[error("environment variable {name}={value:?} is not {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("environment variable {0} is required when WORLD_SIZE is above 1")]
    Missing(&'static str),
    #[error("RANK={rank} is not below WORLD_SIZE={size}")]
    RankOutOfRange { rank: usize, size: usize },
}

fn parse<T: std::str::FromStr>(
    env: &HashMap<String, String>,
    name: &'static str,
    expected: &'static str,
) -> Result<Option<T>, WorldError> {
    env.get(name)
        .map(|v| {
            v.trim().parse().map_err(|_| WorldError::Invalid {
                name,
                value: v.clone(),
                expected,
            })
        })
        .transpose()
}

impl World {
    /// The group this process is a rank of, from torchrun's variables; `None` when `WORLD_SIZE`
    /// is unset or 1 (a single process).
    pub fn from_env() -> Result<Option<World>, WorldError> {
        Self::from_vars(&std::env::vars().collect())
    }

    pub fn from_vars(env: &HashMap<String, String>) -> Result<Option<World>, WorldError> {
        let size: usize = match parse(env, "WORLD_SIZE", "a positive integer")? {
            None | Some(1) => return Ok(None),
            Some(0) => {
                return Err(WorldError::Invalid {
                    name: "WORLD_SIZE",
                    value: "0".into(),
                    expected: "a positive integer",
                });
            }
            Some(n) => n,
        };
        let rank: usize =
            parse(env, "RANK", "a non-negative integer")?.ok_or(WorldError::Missing("RANK"))?;
        if rank >= size {
            return Err(WorldError::RankOutOfRange { rank, size });
        }
        let local_rank = parse(env, "LOCAL_RANK", "a non-negative integer")?.unwrap_or(0);
        let master_addr = env
            .get("MASTER_ADDR")
            .filter(|a| !a.trim().is_empty())
            .ok_or(WorldError::Missing("MASTER_ADDR"))?
            .trim()
            .to_string();
        let master_port =
            parse(env, "MASTER_PORT", "a TCP port")?.ok_or(WorldError::Missing("MASTER_PORT"))?;
        Ok(Some(World {
            rank,
            local_rank,
            size,
            master_addr,
            master_port,
        }))
    }

    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// The address rank 0's rendezvous (the TCPStore) listens on: the one the other ranks dial,
    /// not every address of the host, so a pod on a shared network or a node's other interfaces
    /// never expose it. A loopback `MASTER_ADDR` (one pod) is bound as given; otherwise
    /// `MASTER_ADDR` names this pod, whose IP `pod_ip` is, when known (its DNS name may not
    /// resolve yet while the pod starts); else `MASTER_ADDR` itself, resolved.
    pub fn listen_addr<'a>(&'a self, pod_ip: Option<&'a str>) -> &'a str {
        let addr = self.master_addr.as_str();
        let loopback = addr.eq_ignore_ascii_case("localhost")
            || addr
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        match pod_ip {
            Some(ip) if !loopback => ip,
            _ => addr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_torchruns_contract() {
        assert_eq!(World::from_vars(&env(&[])), Ok(None));
        assert_eq!(World::from_vars(&env(&[("WORLD_SIZE", "1")])), Ok(None));
        let w = World::from_vars(&env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "job-0.job"),
            ("MASTER_PORT", "29500"),
        ]))
        .expect("valid")
        .expect("a group");
        assert_eq!(
            (w.rank, w.local_rank, w.size, w.master_port),
            (3, 1, 4, 29500)
        );
        assert_eq!(w.master_addr, "job-0.job");
        assert!(!w.is_leader());
    }

    #[test]
    fn the_rendezvous_listens_where_the_ranks_dial() {
        let world = |addr: &str| World {
            rank: 0,
            local_rank: 0,
            size: 2,
            master_addr: addr.into(),
            master_port: 29500,
        };
        // One pod: loopback, whatever the pod's IP.
        for addr in ["127.0.0.1", "localhost", "::1", "[::1]"] {
            assert_eq!(world(addr).listen_addr(Some("10.1.2.3")), addr);
        }
        // Several pods: MASTER_ADDR names rank 0's pod, whose IP is known.
        assert_eq!(world("job-0.job").listen_addr(Some("10.1.2.3")), "10.1.2.3");
        assert_eq!(world("10.1.2.3").listen_addr(Some("10.1.2.3")), "10.1.2.3");
        // No pod IP (torchrun on a host): MASTER_ADDR, resolved by the bridge.
        assert_eq!(world("node-a").listen_addr(None), "node-a");
    }

    #[test]
    fn names_the_variable_that_is_wrong() {
        let base = [
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "1"),
        ];
        let with = |k: &str, v: Option<&str>| {
            let mut e = env(&base);
            match v {
                Some(v) => e.insert(k.into(), v.into()),
                None => e.remove(k),
            };
            World::from_vars(&e).expect_err("invalid").to_string()
        };
        assert_eq!(
            with("RANK", None),
            "environment variable RANK is required when WORLD_SIZE is above 1"
        );
        assert_eq!(with("RANK", Some("2")), "RANK=2 is not below WORLD_SIZE=2");
        assert!(
            with("MASTER_PORT", Some("99999")).contains("MASTER_PORT=\"99999\" is not a TCP port")
        );
        assert!(with("WORLD_SIZE", Some("two")).contains("WORLD_SIZE"));
        assert!(with("MASTER_ADDR", Some(" ")).contains("MASTER_ADDR"));
    }
}
