//! Decisions across streams (`book/src/decisions.md`) against aggregates, on PostgreSQL,
//! with the generated code of `orkestra-gen/tests/golden/decisions/courses.yaml` and
//! `orkestra-gen/tests/golden/aggregates/bank.yaml`:
//!
//! - `decision_pg/decision_20_events`: one `SubscribeStudent` through the generated
//!   `Subscription` decision's binding on the in-process bus (`bus.dispatch`): the
//!   redelivery check, the read of its boundary (the course's `CourseDefined` and 19
//!   `StudentSubscribed`, the new student's none: 20 events), the fold, `decide`, the
//!   conditional append of one event, publish, reply. Every course is full (capacity
//!   19), so `decide` records the refusal as one untagged `CourseFull`: each command
//!   appends one event, as the aggregate's does, and no boundary ever grows, so every
//!   iteration reads exactly 20 events.
//! - `decision_pg/aggregate_20_events`: one `Deposit` through the generated `Account`
//!   aggregate's binding on the same bus and store (load the stream, fold, decide, append
//!   one event, publish, reply), on 1,000 accounts of 20 events each, round robin (each
//!   grows by one event per 1,000 commands: about 25 events at the end of a run).
//!
//! Target: the decision's throughput ≥ 0.7× the aggregate's. Both sides go through the
//! path users take (`bus.dispatch` to the generated binding). Besides criterion's
//! estimates of each side, the ratio is measured in interleaved rounds (a round of each
//! side in turn, the median round of each, so the load of a shared machine falls on both
//! alike), printed and written to `target/criterion/decision_vs_aggregate.json`.
//!
//! PostgreSQL comes from `ORKESTRA_PG_URL` (else `postgres://postgres@127.0.0.1:5432/test`);
//! without it the bench is skipped with a notice, or fails with
//! `ORKESTRA_REQUIRE_SERVICES=1`. `python3 benches/ratios.py` prints the ratios.

#[path = "../../orkestra-runtime/tests/support/services.rs"]
#[allow(dead_code)]
mod services;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use orkestra_runtime::{
    Bus, Command, CommandEnvelope, CommandPayload, CommandStatus, EventData, ExpectedVersion,
    HandlerError, Metadata, Query, QueryItem, Store, Tag,
};
use orkestra_tests::aggregates::bank::aggregates as bank;
use orkestra_tests::aggregates::bank::commands::Deposit;
use orkestra_tests::aggregates::bank::events::{AccountOpened, MoneyDeposited};
use orkestra_tests::decisions::courses::aggregates::{self as course_aggregates, Course};
use orkestra_tests::decisions::courses::aggregates::{CourseEvent, CourseState};
use orkestra_tests::decisions::courses::commands::{DefineCourse, SubscribeStudent};
use orkestra_tests::decisions::courses::decisions::{
    self, Subscription, SubscriptionEmit, SubscriptionEvent, SubscriptionReads, SubscriptionState,
};
use orkestra_tests::decisions::courses::events::{CourseDefined, CourseFull, StudentSubscribed};
use orkestra_tests::decisions::courses::types::Level;
use serde_json::json;

mod bank_handlers;
use bank_handlers::{Bank, runtime};

/// Events each command reads: a course's definition and its `CAPACITY` subscriptions.
const CAPACITY: i64 = 19;
/// Courses the decision side goes round.
const COURSES: usize = 20;
/// Accounts the aggregate side goes round, each `CAPACITY + 1` events long at the start.
const ACCOUNTS: usize = 1000;
/// Commands per side in one interleaved round.
const ROUND: usize = 40;
/// Interleaved rounds (the first, a warm-up, is not counted).
const ROUNDS: usize = 21;

/// Courses defined through the generated aggregate.
struct Courses;

impl Course for Courses {
    fn apply(state: &mut CourseState, _: &CourseEvent) {
        let _ = state;
    }

    async fn define_course(
        &self,
        _: &CourseState,
        cmd: &Command<DefineCourse>,
    ) -> Result<Vec<CourseEvent>, HandlerError> {
        Ok(vec![CourseEvent::CourseDefined(CourseDefined {
            course_id: cmd.course_id.clone(),
            capacity: cmd.capacity,
            level: Level::Basic,
        })])
    }
}

/// A course's capacity: a subscription to a full course records that it was turned away
/// (`CourseFull`, untagged, so outside every boundary).
struct Seats;

impl Subscription for Seats {
    fn apply(state: &mut SubscriptionState, event: &SubscriptionEvent, matched: SubscriptionReads) {
        match event {
            SubscriptionEvent::CourseDefined(e) => state.capacity = e.capacity,
            SubscriptionEvent::StudentSubscribed(_) => {
                if matched.course && matched.student {
                    state.already = true;
                }
                if matched.course {
                    state.course_taken += 1;
                }
                if matched.student {
                    state.student_courses += 1;
                }
            }
        }
    }

    async fn decide(
        &self,
        state: &SubscriptionState,
        cmd: &Command<SubscribeStudent>,
    ) -> Result<Vec<SubscriptionEmit>, HandlerError> {
        if state.capacity == 0 {
            return Err(HandlerError::reject("no such course"));
        }
        if state.already {
            return Err(HandlerError::reject("already subscribed"));
        }
        if state.course_taken >= state.capacity {
            return Ok(vec![SubscriptionEmit::CourseFull(CourseFull {
                course_id: cmd.course_id.clone(),
            })]);
        }
        Ok(vec![SubscriptionEmit::StudentSubscribed(
            StudentSubscribed {
                course_id: cmd.course_id.clone(),
                student_id: cmd.student_id.clone(),
            },
        )])
    }
}

/// A name unique to this run, without `-` (the subscription stream template separates
/// its placeholders with `-`).
fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Dispatches `params` and asserts it succeeded: the reply.
async fn dispatch<P: CommandPayload>(bus: &Bus, params: P) -> serde_json::Value {
    let command = Command::new(params, Metadata::new()).unwrap();
    let receipt = bus.dispatch(CommandEnvelope::wrap(command)).await.unwrap();
    assert_eq!(
        receipt.status(),
        CommandStatus::Succeeded,
        "{:?}",
        receipt.error()
    );
    receipt.reply().cloned().unwrap_or_default()
}

fn account_event(event_type: &str, topic: &str, data: serde_json::Value) -> EventData {
    EventData {
        id: orkestra_runtime::new_id(),
        event_type: event_type.into(),
        schema_version: 1,
        topic: Some(topic.into()),
        tags: Vec::new(),
        data,
        metadata: Metadata::new(),
    }
}

/// The two sides' fixtures: full courses (through the bus), accounts of 20 events.
struct Fixture {
    bus: Bus,
    courses: Vec<String>,
    accounts: Vec<String>,
}

async fn fixture(store: &Store) -> Fixture {
    let bus = Bus::in_process();
    bus.subscribe_all(course_aggregates::course(Courses, store.clone()))
        .await
        .unwrap();
    bus.subscribe_all(decisions::subscription(Seats, store.clone()))
        .await
        .unwrap();
    bus.subscribe_all(bank::account(Bank, store.clone()))
        .await
        .unwrap();
    let courses: Vec<String> = (0..COURSES).map(|_| unique("course")).collect();
    for course in &courses {
        dispatch(
            &bus,
            DefineCourse {
                course_id: course.clone(),
                capacity: CAPACITY,
            },
        )
        .await;
        for _ in 0..CAPACITY {
            dispatch(
                &bus,
                SubscribeStudent {
                    course_id: course.clone(),
                    student_id: unique("student"),
                },
            )
            .await;
        }
    }
    // Every course is full: a subscription appends a `CourseFull` and reads 20 events.
    let reply = dispatch(
        &bus,
        SubscribeStudent {
            course_id: courses[0].clone(),
            student_id: unique("student"),
        },
    )
    .await;
    let stream = reply["stream"].as_str().unwrap().to_owned();
    let appended = store.read_stream(&stream, 0, 10).await.unwrap();
    assert_eq!(appended.len(), 1, "{appended:?}");
    assert_eq!(appended[0].event_type(), CourseFull::TYPE_NAME);
    let boundary = Query::of(
        QueryItem::types([CourseDefined::TYPE_NAME, StudentSubscribed::TYPE_NAME])
            .with_tags([Tag::new("course_id", &courses[0]).unwrap()]),
    );
    let read = store.read_query(&boundary, 0, 100).await.unwrap();
    assert_eq!(read.len(), CAPACITY as usize + 1);

    let accounts: Vec<String> = (0..ACCOUNTS).map(|_| unique("acct")).collect();
    for account in &accounts {
        let mut events = vec![account_event(
            AccountOpened::TYPE_NAME,
            AccountOpened::TOPIC,
            json!({ "account_id": account, "owner": "ada", "currency": "eur" }),
        )];
        events.extend((0..CAPACITY).map(|i| {
            account_event(
                MoneyDeposited::TYPE_NAME,
                MoneyDeposited::TOPIC,
                json!({ "account_id": account, "amount": i }),
            )
        }));
        store
            .append(
                &format!("account-{account}"),
                ExpectedVersion::NoStream,
                events,
            )
            .await
            .unwrap();
    }
    Fixture {
        bus,
        courses,
        accounts,
    }
}

/// `iters` subscriptions of new students to the full courses, round robin from `first`.
async fn subscriptions(bus: Bus, courses: Vec<String>, first: usize, iters: usize) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let command = Command::new(
            SubscribeStudent {
                course_id: courses[(first + i) % courses.len()].clone(),
                student_id: unique("student"),
            },
            Metadata::new(),
        )
        .unwrap();
        let receipt = bus.dispatch(CommandEnvelope::wrap(command)).await.unwrap();
        assert_eq!(
            receipt.status(),
            CommandStatus::Succeeded,
            "{:?}",
            receipt.error()
        );
        black_box(receipt);
    }
    start.elapsed()
}

/// `iters` deposits, round robin over the accounts from `first`.
async fn deposits(bus: Bus, accounts: Vec<String>, first: usize, iters: usize) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let command = Command::new(
            Deposit {
                account_id: accounts[(first + i) % accounts.len()].clone(),
                amount: 5,
            },
            Metadata::new(),
        )
        .unwrap();
        let receipt = bus.dispatch(CommandEnvelope::wrap(command)).await.unwrap();
        assert_eq!(
            receipt.status(),
            CommandStatus::Succeeded,
            "{:?}",
            receipt.error()
        );
        black_box(receipt);
    }
    start.elapsed()
}

fn decision_against_aggregate(c: &mut Criterion) {
    let rt = runtime();
    let Some(store) = rt.block_on(services::postgres_store()) else {
        eprintln!("SKIPPED the decision ÷ aggregate bench: it needs PostgreSQL");
        return;
    };
    let Fixture {
        bus,
        courses,
        accounts,
    } = rt.block_on(fixture(&store));

    let mut group = c.benchmark_group("decision_pg");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(6));
    let mut next_course = 0usize;
    group.bench_function("decision_20_events", |b| {
        b.iter_custom(|iters| {
            let first = next_course;
            next_course += iters as usize;
            rt.block_on(rt.spawn(subscriptions(
                bus.clone(),
                courses.clone(),
                first,
                iters as usize,
            )))
            .unwrap()
        })
    });
    let mut next_account = 0usize;
    group.bench_function("aggregate_20_events", |b| {
        b.iter_custom(|iters| {
            let first = next_account;
            next_account += iters as usize;
            rt.block_on(rt.spawn(deposits(
                bus.clone(),
                accounts.clone(),
                first,
                iters as usize,
            )))
            .unwrap()
        })
    });
    group.finish();

    // The ratio, measured interleaved: rounds of each side in turn, the median round of
    // each, so the load of a shared machine falls on both alike.
    let (mut decision_ns, mut aggregate_ns) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let d = rt
            .block_on(rt.spawn(subscriptions(
                bus.clone(),
                courses.clone(),
                next_course,
                ROUND,
            )))
            .unwrap();
        next_course += ROUND;
        let a = rt
            .block_on(rt.spawn(deposits(bus.clone(), accounts.clone(), next_account, ROUND)))
            .unwrap();
        next_account += ROUND;
        if round > 0 {
            decision_ns.push(d.as_secs_f64() * 1e9 / ROUND as f64);
            aggregate_ns.push(a.as_secs_f64() * 1e9 / ROUND as f64);
        }
    }
    let (decision_ns, aggregate_ns) = (median(decision_ns), median(aggregate_ns));
    eprintln!(
        "decision reading 20 events ÷ aggregate command on a ~20-event stream (interleaved): decision {decision_ns:.0} ns, aggregate {aggregate_ns:.0} ns, throughput ratio {:.3}; accounts now ~{} events long",
        aggregate_ns / decision_ns,
        CAPACITY as usize + 1 + next_account / ACCOUNTS
    );
    let dir = std::path::Path::new(
        &std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "../target".into()),
    )
    .join("criterion");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("decision_vs_aggregate.json"),
        format!("{{\"decision_ns\": {decision_ns:.0}, \"aggregate_ns\": {aggregate_ns:.0}}}"),
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

criterion_group!(benches, decision_against_aggregate);
criterion_main!(benches);
