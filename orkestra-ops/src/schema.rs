//! `topology --schemas`: the bindings a schema set declares, as the generated code
//! subscribes them (a command's topic, an event handler's topics or pattern, a
//! dead-letter handler, the retry settings that name its wait queues).

use std::path::PathBuf;
use std::time::Duration;

use orkestra_gen::Generator;
use orkestra_gen::model::{HandlerTarget, Model, PayloadRef};
use orkestra_runtime::bus::rabbitmq::{KnownBinding, KnownTarget};

use crate::Failure;

/// The bindings of the schemas at `paths` (none when `paths` is empty).
pub(crate) fn bindings(paths: &[PathBuf], app_prefix: &str) -> Result<Vec<KnownBinding>, Failure> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let generator = paths.iter().fold(
        Generator::new()
            .app_prefix(app_prefix)
            .cargo_directives(false),
        |g, p| g.schemas(p.clone()),
    );
    let output = generator
        .render()
        .map_err(|e| Failure::Schemas(format!("--schemas: {e}")))?;
    let model = &output.model;
    Ok(model
        .modules
        .iter()
        .flat_map(|m| &m.handlers)
        .map(|h| KnownBinding {
            handler: h.name.clone(),
            target: match &h.target {
                HandlerTarget::Command(r) => KnownTarget::Command(topic(model, r)),
                HandlerTarget::Event(r) => KnownTarget::Events(vec![topic(model, r)]),
                HandlerTarget::Events(rs) => {
                    KnownTarget::Events(rs.iter().map(|r| topic(model, r)).collect())
                }
                HandlerTarget::Topic { pattern, .. } => KnownTarget::Events(vec![pattern.clone()]),
                HandlerTarget::DeadLetters => KnownTarget::DeadLetters,
            },
            max_retries: h.max_retries,
            retry_delay: h.retry.delay_ms.map(Duration::from_millis),
            retry_backoff: h.retry.backoff,
            retry_delay_max: h.retry.max_ms.map(Duration::from_millis),
        })
        .collect())
}

/// The topic of a command or event a binding names.
fn topic(model: &Model, r: &PayloadRef) -> String {
    model
        .modules
        .iter()
        .filter(|m| m.ident == r.module)
        .flat_map(|m| m.commands.iter().chain(&m.events))
        .find(|p| p.name == r.name)
        .map_or_else(|| r.name.clone(), |p| p.topic.clone())
}
