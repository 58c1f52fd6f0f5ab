//! Shared test support: hand-written payloads and the bus conformance suite.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod bus_suite;
pub mod databases;
pub mod logs;
pub mod payloads;
pub mod proxy;
pub mod scale;
pub mod services;
pub mod store_suite;
