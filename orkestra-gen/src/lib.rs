//! # orkestra-gen
//!
//! Turns Orkestra YAML schemas into typed Rust. The generator lands with issue #3; this
//! crate is the workspace slot it fills.

#![deny(missing_docs)]
