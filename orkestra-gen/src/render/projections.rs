//! Projections: rendered like handler bindings of the same target.

use serde::Serialize;

use super::handlers::{HandlerCtx, handler_ctx};
use crate::model::*;

/// A projection: its event enum (as a handler binding's), trait and binding fn.
#[derive(Serialize)]
pub(super) struct ProjectionCtx {
    /// The enum, patterns and names, made as for a handler binding of the same target.
    pub(super) h: HandlerCtx,
    /// The private adapter from the trait to `ProjectionHandler`.
    pub(super) adapter: String,
    pub(super) batch: Option<u32>,
    /// `checkpoint: none` makes it false.
    pub(super) checkpoint: bool,
    /// `partitions`, when not 1 (the binding calls `with_partitions` only then).
    pub(super) partitions: Option<u32>,
}

/// A projection renders like a handler binding of the same target (the same enum and
/// `EventSet`), with its own trait, binding fn and `batch`.
pub(super) fn projection_ctx(model: &Model, p: &Projection, here: &str) -> ProjectionCtx {
    let as_binding = Handler {
        name: p.name.clone(),
        span: p.span.clone(),
        description: Some(
            p.description
                .clone()
                .unwrap_or_else(|| format!("Projection `{}`.", p.name)),
        ),
        target: p.target.clone(),
        max_retries: p.max_retries,
        concurrency: None,
        partition_by: None,
        retry: RetryDelays::default(),
        once: false,
        emits: Vec::new(),
    };
    let h = handler_ctx(model, &as_binding, here);
    ProjectionCtx {
        adapter: format!("{}Binding", h.name.trim_start_matches("r#")),
        batch: p.batch,
        checkpoint: p.checkpoint,
        partitions: (p.partitions != 1).then_some(p.partitions),
        h,
    }
}
