//! Envelope state machines: every transition, and what out-of-order calls do.

mod support;

use orkestra_runtime::{
    Command, CommandEnvelope, CommandStatus, Event, EventEnvelope, EventStatus, HandlerOutcome,
    Metadata, TransitionError,
};
use serde_json::json;
use support::payloads::*;

fn command() -> CommandEnvelope {
    let cmd = Command::<PlaceOrder>::from_json(
        json!({"product_id": "p", "quantity": 1}),
        Metadata::new(),
    )
    .unwrap();
    CommandEnvelope::wrap(cmd)
}

fn event() -> EventEnvelope {
    EventEnvelope::wrap(
        Event::new(
            OrderPlaced {
                order_id: "o".into(),
                quantity: 1,
            },
            Metadata::new(),
        )
        .unwrap(),
    )
}

#[test]
fn command_happy_path() {
    let env = command();
    assert_eq!(env.status(), CommandStatus::Pending);
    assert_eq!(env.attempts(), 0);
    let env = env.mark_dispatched();
    assert_eq!(env.status(), CommandStatus::Dispatched);
    assert_eq!(env.attempts(), 1);
    let env = env.mark_succeeded(json!({"ok": true}));
    assert_eq!(env.status(), CommandStatus::Succeeded);
    assert_eq!(env.reply(), Some(&json!({"ok": true})));
    assert!(!env.retryable());
}

#[test]
fn command_failure_retries_until_the_limit() {
    let mut env = command().max_retries(2);
    for attempt in 1..=3 {
        env.try_mark_dispatched().unwrap();
        assert_eq!(env.attempts(), attempt);
        env.try_mark_failed("boom").unwrap();
        assert_eq!(env.status(), CommandStatus::Failed);
        assert_eq!(env.error(), Some("boom"));
        assert_eq!(env.retryable(), attempt <= 2, "attempt {attempt}");
    }
    let err = env.try_mark_dispatched().unwrap_err();
    assert!(matches!(
        err,
        TransitionError::Command {
            from: CommandStatus::Failed,
            to: CommandStatus::Dispatched,
            ..
        }
    ));
    assert_eq!(env.attempts(), 3, "a refused transition changes nothing");
}

#[test]
fn command_rejection_is_final() {
    let mut env = command().mark_dispatched().mark_rejected("no");
    assert_eq!(env.status(), CommandStatus::Rejected);
    assert!(!env.retryable());
    assert!(env.try_mark_dispatched().is_err());
    assert!(env.try_mark_succeeded(json!(1)).is_err());
    assert_eq!(env.status(), CommandStatus::Rejected);
}

#[test]
fn command_out_of_order_calls_change_nothing() {
    let mut env = command();
    for result in [
        env.try_mark_succeeded(json!(1)),
        env.try_mark_failed("x"),
        env.try_mark_rejected("x"),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                TransitionError::Command {
                    from: CommandStatus::Pending,
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(env.status(), CommandStatus::Pending);
    // The chaining forms ignore the call (and log it) rather than panic.
    let env = command().mark_succeeded(json!(1)).mark_failed("x");
    assert_eq!(env.status(), CommandStatus::Pending);
    assert_eq!(env.reply(), None);
    let env = command()
        .mark_dispatched()
        .mark_succeeded(json!(1))
        .mark_dispatched()
        .mark_failed("late");
    assert_eq!(env.status(), CommandStatus::Succeeded);
    assert_eq!(env.attempts(), 1);
    assert_eq!(env.error(), None);
}

#[test]
fn default_retry_limit() {
    let env = command();
    assert_eq!(env.max_retries_override(), None);
    assert_eq!(
        env.effective_max_retries(),
        orkestra_runtime::DEFAULT_MAX_RETRIES
    );
}

#[test]
fn event_statuses() {
    let env = event();
    assert_eq!(env.status(), EventStatus::Pending);
    let env = env.mark_published();
    assert_eq!(env.status(), EventStatus::Published);
    let env = env
        .register_handler("SendEmail")
        .register_handler("UpdateIndex");
    assert_eq!(env.status(), EventStatus::Published);
    let env = env.mark_handler_succeeded("SendEmail");
    assert_eq!(
        env.status(),
        EventStatus::Published,
        "UpdateIndex still pending"
    );
    let env = env.mark_handler_failed("UpdateIndex");
    assert_eq!(env.status(), EventStatus::PartiallyHandled);
    assert_eq!(
        env.handler_outcome("UpdateIndex"),
        Some(HandlerOutcome::Failed)
    );

    let handled = event()
        .mark_published()
        .register_handler("A")
        .mark_handler_succeeded("A");
    assert_eq!(handled.status(), EventStatus::Handled);
    let failed = event()
        .mark_published()
        .register_handler("A")
        .register_handler("B")
        .mark_handler_failed("A")
        .mark_handler_failed("B");
    assert_eq!(failed.status(), EventStatus::Failed);
    // A failed handler may succeed on a later retry.
    let recovered = failed
        .mark_handler_succeeded("A")
        .mark_handler_succeeded("B");
    assert_eq!(recovered.status(), EventStatus::Handled);
}

#[test]
fn event_out_of_order_calls() {
    let mut env = event().register_handler("A");
    assert!(matches!(
        env.try_mark_handler_succeeded("A"),
        Err(TransitionError::NotPublished { .. })
    ));
    let mut env2 = env.clone().mark_published();
    assert!(matches!(
        env2.try_mark_handler_failed("Nobody"),
        Err(TransitionError::UnknownHandler { .. })
    ));
    env2.try_mark_handler_succeeded("A").unwrap();
    assert!(matches!(
        env2.try_mark_handler_failed("A"),
        Err(TransitionError::AlreadySucceeded { .. })
    ));
    assert_eq!(env2.status(), EventStatus::Handled);
    // Chaining forms: ignored, never a panic.
    env = env.mark_handler_succeeded("A");
    assert_eq!(env.status(), EventStatus::Pending);
    assert_eq!(env.handler_outcome("A"), Some(HandlerOutcome::Pending));
    // Registering twice keeps one entry and its outcome.
    let env3 = env2.register_handler("A");
    assert_eq!(env3.handlers().count(), 1);
    assert_eq!(env3.handler_outcome("A"), Some(HandlerOutcome::Succeeded));
}
