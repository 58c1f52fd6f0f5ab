//! What long-running workers (projections, the relay, process managers) share to run as
//! one across any number of copies of a service: the store's [leases](crate::store::Leases)
//! kept by a [keeper](keeper) that holds this copy's fair share of a worker's partitions,
//! runs each one's work, and hands partitions over as copies come and go.
//!
//! Invariant: a copy works a partition only while it holds the partition's lease, and
//! every write it makes for the partition carries the lease's fencing token, so a copy
//! paused past its lease writes nothing when it resumes.

pub(crate) mod keeper;
pub(crate) mod partition;
pub(crate) mod status;
