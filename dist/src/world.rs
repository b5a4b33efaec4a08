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
