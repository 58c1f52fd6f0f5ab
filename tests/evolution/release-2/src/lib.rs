//! Release 2 of the order service: `OrderPlaced` at version 2 (a field renamed, one
//! added, through an upcast step) and `OrderCancelled` with a new optional field, as the
//! rolling-deploy test runs it beside release 1.
#![allow(missing_docs)]

orkestra_runtime::include_generated!();
