//! Which partition an event belongs to, and how a worker holds its partitions: the
//! settings every worker (projections, the relay, process managers) takes the same way.

use std::time::Duration;

use crate::store::{MAX_PARTITIONS, Store, default_owner};

/// The partition of `key` (a stream name, a process instance's key) among `partitions`:
/// FNV-1a of its bytes, so every copy of every build agrees, and one stream's events all
/// go to one partition (their order kept).
pub(crate) fn partition_of(key: &str, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions
}

/// How a worker holds its partitions, as its builder was told (`None`: the default).
#[derive(Clone, Debug, Default)]
pub(crate) struct LeaseSettings {
    pub(crate) lease: Option<Duration>,
    pub(crate) owner: Option<String>,
}

impl LeaseSettings {
    /// The lease length: the builder's, else the store's `[runners] lease`.
    pub(crate) fn lease(&self, store: &Store) -> Duration {
        self.lease.unwrap_or_else(|| store.runner_lease())
    }

    /// The owner name: the builder's, else `<hostname>:<pid>`.
    pub(crate) fn owner(&self) -> String {
        self.owner.clone().unwrap_or_else(default_owner)
    }
}

/// A partition count out of range, said with the worker's name.
pub(crate) fn check_partitions(worker: &str, partitions: u32) -> Result<(), String> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(format!(
            "{worker:?}: {partitions} partitions is out of range (1 to {MAX_PARTITIONS})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // `% u32::MAX` keeps the reference values as published beside the modulus taken.
    #[allow(clippy::identity_op)]
    fn fnv1a_matches_the_reference_values() {
        // FNV-1a 32-bit of "" and "a" and "foobar" (the reference test vectors).
        assert_eq!(partition_of("", u32::MAX), 0x811c_9dc5 % u32::MAX);
        assert_eq!(partition_of("a", u32::MAX), 0xe40c_292c % u32::MAX);
        assert_eq!(partition_of("foobar", u32::MAX), 0xbf9c_f968 % u32::MAX);
    }

    #[test]
    fn streams_spread_over_every_partition() {
        let mut counts = [0u32; 8];
        for i in 0..8_000 {
            counts[partition_of(&format!("account-{i}"), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(partition_of("account-1", 1), 0);
    }
}
