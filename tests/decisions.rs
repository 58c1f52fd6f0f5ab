//! Decisions generated from `orkestra-gen/tests/golden/decisions/` (`Subscription`:
//! a course's capacity and a student's limit across streams; `UniqueUsername`), driven
//! through the in-process bus on every store that runs here: the courses contract (16
//! tasks of random subscriptions), 32 racers for one seat, unique usernames, redelivery,
//! conflict retries running out, an empty tag value and a panicking decide.

#[path = "../orkestra-runtime/tests/support/services.rs"]
#[allow(dead_code)]
mod services;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orkestra_runtime::{
    Bus, Command, CommandEnvelope, CommandPayload, CommandStatus, Event, EventData,
    ExpectedVersion, HandlerContext, HandlerError, Metadata, Payload, Query, QueryItem, Store, Tag,
    new_id,
};
use orkestra_tests::decisions::courses::aggregates::{self as course_aggregates, Course};
use orkestra_tests::decisions::courses::aggregates::{CourseEvent, CourseState};
use orkestra_tests::decisions::courses::commands::{DefineCourse, SubscribeStudent};
use orkestra_tests::decisions::courses::decisions::{
    self, Subscription, SubscriptionEmit, SubscriptionEvent, SubscriptionReads, SubscriptionState,
    SubscriptionTest,
};
use orkestra_tests::decisions::courses::events::{CourseDefined, StudentSubscribed};
use orkestra_tests::decisions::courses::types::Level;
use orkestra_tests::decisions::names::commands::RegisterUser;
use orkestra_tests::decisions::names::decisions::{
    self as name_decisions, UniqueUsername, UniqueUsernameEmit, UniqueUsernameEvent,
    UniqueUsernameReads, UniqueUsernameState,
};
use orkestra_tests::decisions::names::events::UserRegistered;

/// The most courses one student may take.
const STUDENT_LIMIT: i64 = 3;

/// Courses defined through the generated aggregate (its tagged event is indexed too).
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

/// The subscription rule as a user writes it. Student "panic" makes `decide` panic;
/// student "saboteur" appends a subscription of the course to the store while deciding
/// (another writer, every time), so every append of it conflicts.
struct Seats {
    store: Store,
}

impl Subscription for Seats {
    fn apply(state: &mut SubscriptionState, event: &SubscriptionEvent, matched: SubscriptionReads) {
        match event {
            SubscriptionEvent::CourseDefined(e) => state.capacity = e.capacity,
            SubscriptionEvent::StudentSubscribed(_) => {
                // Both items can match one event (this student, this course): it is
                // applied once, told so.
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
        if cmd.student_id == "panic" {
            panic!("decide blew up");
        }
        if cmd.student_id == "saboteur" {
            let rival = StudentSubscribed {
                course_id: cmd.course_id.clone(),
                student_id: format!("rival-{}", new_id()),
            };
            let tags = rival.tags().map_err(HandlerError::fail)?;
            let event =
                orkestra_runtime::Event::new(rival, Metadata::new()).map_err(HandlerError::fail)?;
            let data = EventData::from_event(&event)
                .map_err(HandlerError::fail)?
                .with_tags(tags);
            self.store
                .append(
                    &format!("rival-{}", new_id()),
                    ExpectedVersion::NoStream,
                    vec![data],
                )
                .await
                .map_err(HandlerError::fail)?;
        }
        if state.capacity == 0 {
            return Err(HandlerError::reject("no such course"));
        }
        if state.already {
            return Err(HandlerError::reject("already subscribed"));
        }
        if state.course_taken >= state.capacity {
            return Err(HandlerError::reject("course full"));
        }
        if state.student_courses >= STUDENT_LIMIT {
            return Err(HandlerError::reject("student limit reached"));
        }
        Ok(vec![SubscriptionEmit::StudentSubscribed(
            StudentSubscribed {
                course_id: cmd.course_id.clone(),
                student_id: cmd.student_id.clone(),
            },
        )])
    }
}

/// Usernames are unique.
struct Usernames;

impl UniqueUsername for Usernames {
    fn apply(
        state: &mut UniqueUsernameState,
        _: &UniqueUsernameEvent,
        matched: UniqueUsernameReads,
    ) {
        if matched.taken {
            state.taken = true;
        }
    }

    async fn decide(
        &self,
        state: &UniqueUsernameState,
        cmd: &Command<RegisterUser>,
    ) -> Result<Vec<UniqueUsernameEmit>, HandlerError> {
        if state.taken {
            return Err(HandlerError::reject(format!(
                "username {:?} is taken",
                cmd.username
            )));
        }
        Ok(vec![UniqueUsernameEmit::UserRegistered(UserRegistered {
            user_id: cmd.user_id,
            username: cmd.username.clone(),
        })])
    }
}

/// A name unique to this run, without `-` (the stream template separates its
/// placeholders with `-`, so a course id may not hold one).
fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", new_id().replace('-', ""))
}

fn command<P: CommandPayload>(params: P) -> Command<P> {
    Command::new(params, Metadata::new()).unwrap()
}

fn subscribe(course: &str, student: &str) -> Command<SubscribeStudent> {
    command(SubscribeStudent {
        course_id: course.into(),
        student_id: student.into(),
    })
}

async fn stores(test: &str) -> Vec<(&'static str, Store)> {
    let mut stores = vec![("memory", Store::memory())];
    let path = std::env::temp_dir().join(format!("orkestra-decisions-{test}-{}.db", new_id()));
    stores.push(("sqlite", Store::sqlite(&path).await.unwrap()));
    if let Some(store) = services::postgres_store().await {
        stores.push(("postgres", store));
    }
    stores
}

/// A bus with the course aggregate and both decisions, over `store`.
async fn bus_over(store: &Store) -> Bus {
    let bus = Bus::in_process();
    bus.subscribe_all(course_aggregates::course(Courses, store.clone()))
        .await
        .unwrap();
    bus.subscribe_all(decisions::subscription(
        Seats {
            store: store.clone(),
        },
        store.clone(),
    ))
    .await
    .unwrap();
    bus.subscribe_all(name_decisions::unique_username(Usernames, store.clone()))
        .await
        .unwrap();
    bus
}

/// Counts every subscription published on the bus, by event id.
#[derive(Clone, Default)]
struct Published(Arc<Mutex<HashMap<String, u32>>>);

impl Published {
    async fn subscribe(&self, bus: &Bus) {
        let seen = self.0.clone();
        bus.subscribe(orkestra_runtime::Subscription::events::<
            orkestra_runtime::Event<StudentSubscribed>,
            _,
            _,
        >(
            "CountSubscriptions",
            move |event, _ctx: HandlerContext| {
                let seen = seen.clone();
                async move {
                    *seen.lock().unwrap().entry(event.id.clone()).or_default() += 1;
                    Ok(())
                }
            },
        ))
        .await
        .unwrap();
    }

    fn counts(&self) -> HashMap<String, u32> {
        self.0.lock().unwrap().clone()
    }
}

async fn define(bus: &Bus, course: &str, capacity: i64) {
    let receipt = bus
        .dispatch(CommandEnvelope::wrap(command(DefineCourse {
            course_id: course.into(),
            capacity,
        })))
        .await
        .unwrap();
    assert_eq!(
        receipt.status(),
        CommandStatus::Succeeded,
        "{:?}",
        receipt.error()
    );
}

/// Every stored subscription of this run's courses: (course, student) per event.
async fn stored_subscriptions(store: &Store, courses: &[String]) -> Vec<(String, String)> {
    let mut query = Query::of(
        QueryItem::types(["Shop.Courses.StudentSubscribed"]).with_tags([Tag::new(
            "course_id",
            &courses[0],
        )
        .unwrap()]),
    );
    for course in &courses[1..] {
        query = query.or(QueryItem::types(["Shop.Courses.StudentSubscribed"])
            .with_tags([Tag::new("course_id", course).unwrap()]));
    }
    let events = store.read_query(&query, 0, 100_000).await.unwrap();
    events
        .iter()
        .map(|e| {
            let s: orkestra_runtime::Event<StudentSubscribed> = e.decode().unwrap();
            (s.data.course_id.clone(), s.data.student_id.clone())
        })
        .collect()
}

/// A small deterministic generator (xorshift64*): the attempts differ per task and seed.
struct Random(u64);

impl Random {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// The contract's courses: 10 courses of capacity 5, 60 students of at most 3 courses,
/// 16 tasks × 200 random attempts through the bus (two buses: two processes). No course
/// over capacity, no student over the limit, every accepted subscription stored (and
/// published) once, every refusal true of the end state (subscriptions only grow, so a
/// reason true when refused is still true at the end).
async fn courses(name: &str, store: Store) {
    let buses = [bus_over(&store).await, bus_over(&store).await];
    let published = Published::default();
    for bus in &buses {
        published.subscribe(bus).await;
    }
    let run = unique("run");
    let courses: Vec<String> = (0..10).map(|c| format!("c{c}_{run}")).collect();
    for course in &courses {
        define(&buses[0], course, 5).await;
    }
    // Unique to the run too: a student's boundary spans every course of the store.
    let students: Vec<String> = (0..60).map(|s| format!("s{s}_{run}")).collect();
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let bus = buses[task as usize % 2].clone();
        let (courses, students) = (courses.clone(), students.clone());
        tasks.push(tokio::spawn(async move {
            let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ (task + 1));
            let mut outcomes = Vec::new();
            for _ in 0..200 {
                let course = courses[random.below(courses.len())].clone();
                let student = students[random.below(students.len())].clone();
                let cmd = subscribe(&course, &student);
                let id = cmd.id.clone();
                let receipt = bus
                    .dispatch(CommandEnvelope::wrap(cmd).with_max_retries(3))
                    .await
                    .unwrap();
                outcomes.push((
                    course,
                    student,
                    id,
                    receipt.status(),
                    receipt.error().map(str::to_owned),
                    receipt.reply().cloned(),
                ));
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap());
    }
    let stored = stored_subscriptions(&store, &courses).await;
    let mut per_course: HashMap<&str, i64> = HashMap::new();
    let mut per_student: HashMap<&str, i64> = HashMap::new();
    let mut pairs = HashSet::new();
    for (course, student) in &stored {
        *per_course.entry(course).or_default() += 1;
        *per_student.entry(student).or_default() += 1;
        assert!(
            pairs.insert((course.clone(), student.clone())),
            "{name}: {student} subscribed twice to {course}"
        );
    }
    assert!(
        per_course.values().all(|&n| n <= 5),
        "{name}: a course over capacity: {per_course:?}"
    );
    assert!(
        per_student.values().all(|&n| n <= STUDENT_LIMIT),
        "{name}: a student over the limit: {per_student:?}"
    );
    let mut accepted = 0;
    for (course, student, _, status, error, reply) in &outcomes {
        match status {
            CommandStatus::Succeeded => {
                accepted += 1;
                assert!(
                    pairs.contains(&(course.clone(), student.clone())),
                    "{name}: accepted {student} → {course} is not stored"
                );
                let reply = reply.as_ref().unwrap();
                assert_eq!(
                    reply["stream"],
                    format!("subscription-{course}-{student}"),
                    "{name}"
                );
                assert!(reply["position"].is_u64(), "{name}: {reply}");
            }
            CommandStatus::Rejected => {
                let reason = error.as_deref().unwrap_or_default();
                let true_reason = if reason.contains("already subscribed") {
                    pairs.contains(&(course.clone(), student.clone()))
                } else if reason.contains("course full") {
                    per_course.get(course.as_str()) == Some(&5)
                } else if reason.contains("student limit") {
                    per_student.get(student.as_str()) == Some(&STUDENT_LIMIT)
                } else {
                    false
                };
                assert!(
                    true_reason,
                    "{name}: {student} → {course} refused: {reason}"
                );
            }
            other => panic!("{name}: {student} → {course}: {other:?} {error:?}"),
        }
    }
    assert_eq!(
        accepted,
        stored.len(),
        "{name}: every acceptance stored once"
    );
    assert!(accepted > 0, "{name}: some subscriptions went through");
    let counts = published.counts();
    assert_eq!(
        counts.len(),
        stored.len(),
        "{name}: each stored one published"
    );
    assert!(
        counts.values().all(|&n| n == 1),
        "{name}: published once each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn courses_on_memory() {
    courses("memory", Store::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn courses_on_sqlite() {
    let path = std::env::temp_dir().join(format!("orkestra-decisions-courses-{}.db", new_id()));
    courses("sqlite", Store::sqlite(&path).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn courses_on_postgres() {
    if let Some(store) = services::postgres_store().await {
        courses("postgres", store).await;
    }
}

/// 32 students race for the one seat of a course: exactly one gets it, on every store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_racers_for_one_seat() {
    for (name, store) in stores("racers").await {
        let buses = [bus_over(&store).await, bus_over(&store).await];
        let course = unique("seat");
        define(&buses[0], &course, 1).await;
        let mut tasks = Vec::new();
        for racer in 0..32 {
            let bus = buses[racer % 2].clone();
            let cmd = subscribe(&course, &unique(&format!("racer{racer}")));
            tasks.push(tokio::spawn(async move {
                bus.dispatch(CommandEnvelope::wrap(cmd).with_max_retries(5))
                    .await
                    .unwrap()
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            let receipt = t.await.unwrap();
            statuses.push((receipt.status(), receipt.error().map(str::to_owned)));
        }
        let won = statuses
            .iter()
            .filter(|(s, _)| *s == CommandStatus::Succeeded)
            .count();
        assert_eq!(won, 1, "{name}: {statuses:?}");
        assert!(
            statuses.iter().all(|(s, e)| *s == CommandStatus::Succeeded
                || (*s == CommandStatus::Rejected
                    && e.as_deref().is_some_and(|e| e.contains("course full")))),
            "{name}: {statuses:?}"
        );
        assert_eq!(
            stored_subscriptions(&store, std::slice::from_ref(&course))
                .await
                .len(),
            1,
            "{name}"
        );
    }
}

fn register(username: &str) -> Command<RegisterUser> {
    command(RegisterUser {
        user_id: uuid::Uuid::new_v4(),
        username: username.into(),
    })
}

/// Two users race for one username: one gets it; another name is still free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usernames_are_unique() {
    for (name, store) in stores("names").await {
        let bus = bus_over(&store).await;
        let username = format!("ada-{}", new_id());
        let (a, b) = tokio::join!(
            bus.dispatch(CommandEnvelope::wrap(register(&username)).with_max_retries(5)),
            bus.dispatch(CommandEnvelope::wrap(register(&username)).with_max_retries(5)),
        );
        let mut statuses = [a.unwrap().status(), b.unwrap().status()];
        statuses.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(
            statuses,
            [CommandStatus::Rejected, CommandStatus::Succeeded],
            "{name}"
        );
        let other = bus
            .dispatch(CommandEnvelope::wrap(register(&format!(
                "grace-{}",
                new_id()
            ))))
            .await
            .unwrap();
        assert_eq!(other.status(), CommandStatus::Succeeded, "{name}");
        let taken = store
            .read_query(
                &Query::of(QueryItem::tags([Tag::new("username", &username).unwrap()])),
                0,
                10,
            )
            .await
            .unwrap();
        assert_eq!(taken.len(), 1, "{name}");
        let tags: Vec<&str> = taken[0].tags().iter().map(Tag::as_str).collect();
        assert!(
            tags.contains(&format!("username:{username}").as_str()),
            "{name}: {tags:?}"
        );
    }
}

/// A command delivered again after its events were stored appends nothing and replies
/// as the first delivery did.
#[tokio::test]
async fn a_redelivered_command_appends_nothing() {
    for (name, store) in stores("redelivery").await {
        let bus = bus_over(&store).await;
        let published = Published::default();
        published.subscribe(&bus).await;
        let course = unique("redo");
        define(&bus, &course, 5).await;
        let student = unique("ada");
        let cmd = subscribe(&course, &student);
        let first = bus
            .dispatch(CommandEnvelope::wrap(cmd.clone()))
            .await
            .unwrap();
        assert_eq!(
            first.status(),
            CommandStatus::Succeeded,
            "{name}: {:?}",
            first.error()
        );
        let again = bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
        assert_eq!(
            again.status(),
            CommandStatus::Succeeded,
            "{name}: {:?}",
            again.error()
        );
        assert_eq!(first.reply(), again.reply(), "{name}");
        let stream = format!("subscription-{course}-{student}");
        assert_eq!(
            store.read_stream(&stream, 0, 10).await.unwrap().len(),
            1,
            "{name}"
        );
        // Published again (at least once), as aggregates do for a redelivery.
        assert_eq!(
            published.counts().values().copied().collect::<Vec<_>>(),
            vec![2],
            "{name}"
        );
    }
}

/// A condition that fails on every try fails the command after `conflict_retries` + 1
/// tries, naming the decision and the tries; nothing of the command is written.
#[tokio::test]
async fn conflict_retries_run_out() {
    for (name, store) in stores("conflicts").await {
        let bus = bus_over(&store).await;
        let course = unique("busy");
        define(&bus, &course, 100).await;
        let receipt = bus
            .dispatch(CommandEnvelope::wrap(subscribe(&course, "saboteur")).with_max_retries(0))
            .await
            .unwrap();
        assert_eq!(receipt.status(), CommandStatus::Failed, "{name}");
        let error = receipt.error().unwrap();
        assert!(
            error.contains("decision Subscription gave up after 6 tries"),
            "{name}: {error}"
        );
        let stream = format!("subscription-{course}-saboteur");
        assert!(
            store.read_stream(&stream, 0, 10).await.unwrap().is_empty(),
            "{name}"
        );
        // The rivals the saboteur appended, one per try, are all there.
        assert_eq!(
            stored_subscriptions(&store, &[course]).await.len(),
            6,
            "{name}"
        );
    }
}

/// An empty tag value is a rejection and nothing is written.
#[tokio::test]
async fn an_empty_tag_value_is_rejected_with_nothing_written() {
    for (name, store) in stores("empty").await {
        let bus = bus_over(&store).await;
        let from = store.head().await.unwrap().map_or(0, |h| h + 1);
        let empty_student = subscribe(&unique("c"), "");
        let empty_username = register("");
        let ids = [empty_student.id.clone(), empty_username.id.clone()];
        let receipt = bus
            .dispatch(CommandEnvelope::wrap(empty_student))
            .await
            .unwrap();
        assert_eq!(receipt.status(), CommandStatus::Rejected, "{name}");
        let error = receipt.error().unwrap();
        assert!(
            error.contains("param `student_id` is empty"),
            "{name}: {error}"
        );
        // A tag value that is not in the stream name: the boundary refuses it.
        let receipt = bus
            .dispatch(CommandEnvelope::wrap(empty_username))
            .await
            .unwrap();
        assert_eq!(receipt.status(), CommandStatus::Rejected, "{name}");
        let error = receipt.error().unwrap();
        assert!(
            error.contains(
                "param `username` is empty, so decision UniqueUsername has no `username` tag"
            ),
            "{name}: {error}"
        );
        // Nothing either command caused is stored (other tests share the database).
        let caused: Vec<_> = store
            .read_all(from, 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| {
                e.metadata()
                    .causation_id
                    .as_ref()
                    .is_some_and(|c| ids.contains(c))
            })
            .collect();
        assert!(caused.is_empty(), "{name}: {caused:?}");
    }
}

/// A decide that panics is a failure: retried, then dead-lettered; nothing written.
#[tokio::test]
async fn a_panicking_decide_is_retried_then_dead_lettered() {
    let store = Store::memory();
    let bus = bus_over(&store).await;
    let mut dead = bus.dead_letters().await.unwrap();
    let course = unique("p");
    define(&bus, &course, 5).await;
    let before = store.read_all(0, 100).await.unwrap().len();
    let receipt = bus
        .dispatch(CommandEnvelope::wrap(subscribe(&course, "panic")).with_max_retries(2))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Failed);
    assert_eq!(receipt.attempts(), 3);
    assert!(receipt.error().unwrap().contains("decide blew up"));
    let letter = tokio::time::timeout(Duration::from_secs(5), dead.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.handler(), "Subscription");
    assert_eq!(store.read_all(0, 100).await.unwrap().len(), before);
}

/// Given / when / then: the helper folds only what the command's boundary matches.
#[tokio::test]
async fn given_when_then_folds_the_boundary_only() {
    let seats = || Seats {
        store: Store::memory(),
    };
    let defined = SubscriptionEvent::CourseDefined(CourseDefined {
        course_id: "c1".into(),
        capacity: 1,
        level: Level::Advanced,
    });
    let elsewhere = SubscriptionEvent::StudentSubscribed(StudentSubscribed {
        course_id: "c2".into(),
        student_id: "bob".into(),
    });
    let taken = SubscriptionEvent::StudentSubscribed(StudentSubscribed {
        course_id: "c1".into(),
        student_id: "bob".into(),
    });
    let test = SubscriptionTest::given(seats(), vec![defined.clone(), elsewhere.clone()]);
    let state = test.state(&subscribe("c1", "ada")).unwrap();
    assert_eq!(
        (state.capacity, state.course_taken, state.student_courses),
        (1, 0, 0)
    );
    let events = test.when(subscribe("c1", "ada")).await.unwrap();
    assert_eq!(events.len(), 1);
    // bob's other course counts against bob, not against c1.
    let state = test.state(&subscribe("c1", "bob")).unwrap();
    assert_eq!((state.course_taken, state.student_courses), (0, 1));
    let full = SubscriptionTest::given(seats(), vec![defined, elsewhere, taken]);
    let refused = full.when(subscribe("c1", "ada")).await.unwrap_err();
    assert!(refused.to_string().contains("course full"), "{refused}");
}

/// An event the aggregate appends carries the tags its schema lists, so decisions find
/// it: the course definition is indexed by `course_id`.
#[tokio::test]
async fn an_aggregate_indexes_its_tagged_events() {
    for (name, store) in stores("aggregate-tags").await {
        let bus = bus_over(&store).await;
        let course = unique("tagged");
        define(&bus, &course, 2).await;
        let found = store
            .read_query(
                &Query::of(QueryItem::tags([Tag::new("course_id", &course).unwrap()])),
                0,
                10,
            )
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "{name}");
        assert_eq!(found[0].stream(), format!("course-{course}"), "{name}");
        assert_eq!(
            found[0].tags(),
            [Tag::new("course_id", &course).unwrap()],
            "{name}"
        );
    }
}

/// Subscriptions stored before `StudentSubscribed` had tags (an older release appended
/// them without index entries): a decision reading that tag refuses to run, naming the
/// command that fixes it, and writes nothing; after `reindex_tags` it runs and counts
/// them. On the embedded stores, each a fresh one (a shared PostgreSQL database has the
/// tag declared by the other tests already; the store suite covers the refusal there).
#[tokio::test]
async fn a_decision_refuses_an_unindexed_tag_until_reindexed() {
    let path = std::env::temp_dir().join(format!("orkestra-decisions-reindex-{}.db", new_id()));
    for (name, store) in [
        ("memory", Store::memory()),
        ("sqlite", Store::sqlite(&path).await.unwrap()),
    ] {
        let course = unique("old");
        // What the older release wrote: the course and one subscription, untagged.
        for (stream, data) in [
            (
                format!("course-{course}"),
                EventData::from_event(
                    &Event::new(
                        CourseDefined::from_json(
                            serde_json::json!({ "course_id": course, "capacity": 1 }),
                        )
                        .unwrap(),
                        Metadata::new(),
                    )
                    .unwrap(),
                )
                .unwrap(),
            ),
            (
                format!("subscription-{course}-first"),
                EventData::from_event(
                    &Event::new(
                        StudentSubscribed {
                            course_id: course.clone(),
                            student_id: "first".into(),
                        },
                        Metadata::new(),
                    )
                    .unwrap(),
                )
                .unwrap(),
            ),
        ] {
            store
                .append(&stream, ExpectedVersion::NoStream, vec![data])
                .await
                .unwrap();
        }
        assert!(data_has_no_tags(&store).await, "{name}");

        let bus = bus_over(&store).await;
        let refused = bus
            .dispatch(CommandEnvelope::wrap(subscribe(&course, "second")).with_max_retries(0))
            .await
            .unwrap();
        assert_eq!(refused.status(), CommandStatus::Failed, "{name}");
        let error = refused.error().unwrap();
        assert!(
            error.contains("decision Subscription")
                && error.contains("orkestra store reindex-tags"),
            "{name}: {error}"
        );
        assert!(
            store
                .read_stream(&format!("subscription-{course}-second"), 0, 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}: a refused decision wrote"
        );

        let report = store.reindex_tags(|_, _| {}).await.unwrap();
        // The course's `course_id`, the subscription's `course_id` and `student_id`.
        assert_eq!(report.written(), 3, "{name}: {report:?}");
        // Now the old subscription counts: the course of capacity 1 is full.
        let full = bus
            .dispatch(CommandEnvelope::wrap(subscribe(&course, "second")))
            .await
            .unwrap();
        assert_eq!(full.status(), CommandStatus::Rejected, "{name}");
        assert!(
            full.error().unwrap().contains("full"),
            "{name}: {:?}",
            full.error()
        );
    }
}

/// No stored event of the store has tags yet.
async fn data_has_no_tags(store: &Store) -> bool {
    store
        .read_all(0, 100)
        .await
        .unwrap()
        .iter()
        .all(|e| e.tags().is_empty())
}
