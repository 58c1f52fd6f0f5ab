//! Release 1 of the order service: the code `orkestra-gen` generates from its
//! `schemas/`, as the rolling-deploy test runs it beside release 2.
#![allow(missing_docs)]

orkestra_runtime::include_generated!();
