//! What long-running workers (projections, the relay, process managers) share to run as
//! one across any number of copies of a service: the store's [leases](crate::store::Leases)
//! kept by a [keeper](keeper) that holds this copy's fair share of a worker's partitions,
//! runs each one's work, and hands partitions over as copies come and go.
//!
//! Invariant: a copy works a partition only while it holds the partition's lease, and
//! every write it makes for the partition carries the lease's fencing token, so a copy
//! paused past its lease writes nothing when it resumes.

// The workers move onto the keeper one by one (issue 24); until each has, parts of it
// are used by its tests only.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod keeper;
// Its own tests use the hash only, so its settings are unused in test builds too.
#[allow(dead_code)]
pub(crate) mod partition;
