//! Personal data on the real broker: with the store's keys (`Bus::with_keys`) the
//! RabbitMQ bus publishes personal fields sealed, so every queue of the topology (work,
//! wait, dead letter) holds ciphertext, byte-searched after `forget` for the plaintext;
//! consumers open them (other subjects' values intact, a forgotten subject's as their
//! replacements with `Event::redacted`); a tampered value is dead-lettered naming the
//! event type and field; a handler of personal events is refused at subscribe without
//! keys; the debug logs of the whole run hold no plaintext.

mod support;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use orkestra_runtime::codegen::{ObjectReader, required};
use orkestra_runtime::keys::{ENCRYPTED_KEY, PersonalData, PersonalEvent, PersonalField};
use orkestra_runtime::{
    Bus, BusError, Event, EventEnvelope, EventPayload, ExpectedVersion, HandlerError, Metadata,
    Payload, PayloadError, Store, StoreError, Subscription,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use support::logs::LogBuffer;
use support::services::{amqp_url, rabbit_bus_with, rabbit_config, rabbitmqctl};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CustomerRegistered {
    customer_id: String,
    email: String,
    name: String,
    plan: String,
}

impl Payload for CustomerRegistered {
    const TYPE_NAME: &'static str = "Test.Customers.CustomerRegistered";
    const TOPIC: &'static str = "customers.events.customer_registered";

    fn from_json(value: Value) -> Result<Self, PayloadError> {
        let names = ["customer_id", "email", "name", "plan"];
        let mut r = ObjectReader::new(value, &names, &names)?;
        let customer_id = r.take::<String>("customer_id");
        let email = r.take::<String>("email");
        let name = r.take::<String>("name");
        let plan = r.take::<String>("plan");
        r.finish()?;
        Ok(Self {
            customer_id: required(customer_id, "customer_id")?,
            email: required(email, "email")?,
            name: required(name, "name")?,
            plan: required(plan, "plan")?,
        })
    }

    fn check(&self) -> Result<(), PayloadError> {
        Ok(())
    }
}
impl EventPayload for CustomerRegistered {}

static EVENTS: &[PersonalEvent] = &[PersonalEvent::new(
    CustomerRegistered::TYPE_NAME,
    "customer_id",
    &[
        PersonalField::new("email", "\"\""),
        PersonalField::new("name", "\"(erased)\""),
    ],
)];

fn personal() -> PersonalData {
    PersonalData::new().with_events(EVENTS)
}

/// Every log line of this test binary at debug level, from the first test on.
fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buffer
    })
}

/// A person's values, unique to the run so a byte search finds only them.
struct Person {
    subject: String,
    email: String,
    name: String,
}

impl Person {
    fn new(who: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            subject: format!("{who}-{id}"),
            email: format!("{who}.{id}@mail.example"),
            name: format!("{who} Lovelace {id}"),
        }
    }

    fn registered(&self) -> Event<CustomerRegistered> {
        Event::unchecked(
            CustomerRegistered {
                customer_id: self.subject.clone(),
                email: self.email.clone(),
                name: self.name.clone(),
                plan: "gold".into(),
            },
            Metadata::new(),
        )
    }

    fn plaintexts(&self) -> [&str; 2] {
        [&self.email, &self.name]
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn channel() -> (Connection, Channel) {
    let connection = Connection::connect(amqp_url().expose(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

async fn depth(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .unwrap_or(0)
}

async fn wait_for_depth(channel: &Channel, queue: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = depth(channel, queue).await;
        if found >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} holds {found} messages, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The queues whose names start with `prefix`: the broker's list (`rabbitmqctl`), with
/// `known` added in case it is not installed.
fn queues_of(prefix: &str, known: &[String]) -> Vec<String> {
    let mut queues: Vec<String> = rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name"])
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    for queue in known {
        if !queues.contains(queue) {
            queues.push(queue.clone());
        }
    }
    queues.sort();
    queues
}

/// Every message of `queue` (body and headers, as bytes), read without acknowledging
/// it: the channel is closed afterwards, so they all go back.
async fn every_message(connection: &Connection, queue: &str) -> Vec<Vec<u8>> {
    let channel = connection.create_channel().await.unwrap();
    let mut messages = Vec::new();
    while let Some(got) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
    {
        let mut bytes = got.delivery.data.clone();
        bytes.extend_from_slice(format!("{:?}", got.delivery.properties).as_bytes());
        messages.push(bytes);
    }
    let _ = channel.close(200, "read".into()).await;
    messages
}

async fn delete_queues(channel: &Channel, queues: &[String]) {
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// What a reading handler saw.
#[derive(Debug)]
struct Seen {
    data: CustomerRegistered,
    redacted: Vec<String>,
}

fn reader(name: &'static str, tx: mpsc::UnboundedSender<Seen>) -> Subscription {
    Subscription::events(name, move |event: Event<CustomerRegistered>, _ctx| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Seen {
                redacted: event.redacted().to_vec(),
                data: event.data,
            });
            Ok(())
        }
    })
    .with_personal_data(EVENTS)
}

fn failing(name: &'static str) -> Subscription {
    Subscription::events(name, |_event: Event<CustomerRegistered>, _ctx| async {
        Err(HandlerError::Fail("the mail server is down".into()))
    })
    .with_personal_data(EVENTS)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a handler")
        .expect("channel closed")
}

/// Two seen events, by subject.
async fn two(rx: &mut mpsc::UnboundedReceiver<Seen>) -> BTreeMap<String, Seen> {
    let mut seen = BTreeMap::new();
    for _ in 0..2 {
        let s = next(rx).await;
        seen.insert(s.data.customer_id.clone(), s);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_holds_ciphertext_and_a_forgotten_subject_reads_as_replacements() {
    let logs = logs();
    let config = rabbit_config();
    let p = config.bus.prefix.clone();
    let store = Store::memory().with_personal_data(&personal()).unwrap();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let bus = bus.with_keys(&store);
    let (ada, bob) = (Person::new("ada"), Person::new("bob"));

    // A queue that nobody consumes for now: declared by a bus that then stops.
    let declaring = rabbit_bus_with(&config).await.unwrap().with_keys(&store);
    let (later_tx, mut later_rx) = mpsc::unbounded_channel();
    declaring
        .subscribe(reader("Later", later_tx.clone()))
        .await
        .unwrap();
    declaring.shutdown(Duration::from_secs(5)).await.unwrap();

    let mut letters = bus.dead_letters().await.unwrap();
    // A handler that reads at once, one that fails and waits a minute for its retry (its
    // messages sit in its wait queue), one out of retries at once (dead letters).
    let (now_tx, mut now_rx) = mpsc::unbounded_channel();
    bus.subscribe(reader("Witness", now_tx)).await.unwrap();
    bus.subscribe(failing("Waiting").with_retry_delay(Duration::from_secs(60)))
        .await
        .unwrap();
    bus.subscribe(failing("Exhausted").with_max_retries(0))
        .await
        .unwrap();

    // Ada's event through the store and the bus, Bob's straight on the bus.
    store
        .append_and_publish(
            &bus,
            &format!("customer-{}", ada.subject),
            ExpectedVersion::NoStream,
            vec![EventEnvelope::wrap(ada.registered())],
        )
        .await
        .unwrap();
    bus.publish(EventEnvelope::wrap(bob.registered()))
        .await
        .unwrap();

    // With the keys, handlers see plain data.
    let seen = two(&mut now_rx).await;
    for person in [&ada, &bob] {
        let s = &seen[&person.subject];
        assert_eq!(s.data.email, person.email);
        assert_eq!(s.data.name, person.name);
        assert!(s.redacted.is_empty());
    }

    // A dead letter reaches its readers opened, as the handler would have seen it.
    for _ in 0..2 {
        let letter = tokio::time::timeout(WAIT, letters.recv())
            .await
            .expect("a dead letter")
            .unwrap();
        assert_eq!(letter.handler(), "Exhausted");
        let data = letter.message().payload_json().unwrap();
        let person = if data["customer_id"] == ada.subject.as_str() {
            &ada
        } else {
            &bob
        };
        assert_eq!(data["email"], person.email.as_str(), "{data}");
    }
    drop(letters);

    let (connection, ch) = channel().await;
    let work = |h: &str| format!("{p}.evt.{h}");
    let wait_queue = format!("{p}.evt.Waiting.wait.60000ms");
    let dead = format!("{p}.deadletter.all");
    wait_for_depth(&ch, &work("Later"), 2).await;
    wait_for_depth(&ch, &wait_queue, 2).await;
    wait_for_depth(&ch, &dead, 2).await;

    let forgotten = store.forget(&ada.subject).await.unwrap();
    assert!(forgotten.key_deleted);

    // Every message of every queue of this topology, byte-searched.
    let known = vec![
        work("Later"),
        work("Waiting"),
        work("Exhausted"),
        work("Witness"),
        wait_queue.clone(),
        dead.clone(),
    ];
    let queues = queues_of(&p, &known);
    let mut read = BTreeMap::new();
    for queue in &queues {
        let messages = every_message(&connection, queue).await;
        for message in &messages {
            for person in [&ada, &bob] {
                for plain in person.plaintexts() {
                    assert!(
                        !contains(message, plain.as_bytes()),
                        "{plain:?} found in a message of {queue}: {}",
                        String::from_utf8_lossy(message)
                    );
                }
            }
            assert!(
                contains(message, ENCRYPTED_KEY.as_bytes()),
                "a message of {queue} holds its personal fields sealed"
            );
            assert!(
                contains(message, ada.subject.as_bytes())
                    || contains(message, bob.subject.as_bytes())
            );
        }
        read.insert(queue.clone(), messages.len());
    }
    assert_eq!(read[&work("Later")], 2, "{read:?}");
    assert_eq!(read[&wait_queue], 2, "{read:?}");
    assert_eq!(read[&dead], 2, "{read:?}");

    // The unconsumed messages, consumed after the forget: Ada's fields as their
    // replacements, listed by `redacted()`; Bob's intact.
    let consuming = rabbit_bus_with(&config).await.unwrap().with_keys(&store);
    consuming
        .subscribe(reader("Later", later_tx))
        .await
        .unwrap();
    let seen = two(&mut later_rx).await;
    let a = &seen[&ada.subject];
    assert_eq!(a.data.email, "");
    assert_eq!(a.data.name, "(erased)");
    assert_eq!(a.data.plan, "gold");
    let mut redacted = a.redacted.clone();
    redacted.sort();
    assert_eq!(redacted, ["email", "name"]);
    let b = &seen[&bob.subject];
    assert_eq!(
        (b.data.email.as_str(), b.data.name.as_str()),
        (bob.email.as_str(), bob.name.as_str())
    );
    assert!(b.redacted.is_empty());

    // The store's typed read says the same.
    let recorded = store
        .read_stream(&format!("customer-{}", ada.subject), 0, 10)
        .await
        .unwrap();
    let decoded = recorded[0].decode::<CustomerRegistered>().unwrap();
    assert_eq!(decoded.email, "");
    let mut redacted = decoded.redacted().to_vec();
    redacted.sort();
    assert_eq!(redacted, ["email", "name"]);

    // An event of a forgotten subject published after the forget (what the relay does
    // with one stored before it) goes out with replacements, never an error.
    let (after_tx, mut after_rx) = mpsc::unbounded_channel();
    consuming
        .subscribe(reader("After", after_tx))
        .await
        .unwrap();
    consuming
        .publish(EventEnvelope::wrap(ada.registered()))
        .await
        .unwrap();
    let s = next(&mut after_rx).await;
    assert_eq!(
        (s.data.email.as_str(), s.data.name.as_str()),
        ("", "(erased)")
    );
    let mut redacted = s.redacted.clone();
    redacted.sort();
    assert_eq!(redacted, ["email", "name"]);

    consuming.shutdown(Duration::from_secs(5)).await.unwrap();
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    let text = logs.text();
    assert!(
        text.contains("Dead letter recorded"),
        "the logs were captured"
    );
    for person in [&ada, &bob] {
        for plain in person.plaintexts() {
            assert!(!text.contains(plain), "{plain:?} in the logs");
        }
    }
    delete_queues(&ch, &queues_of(&p, &known)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_moved_value_is_dead_lettered_naming_the_event_type_and_field() {
    let logs = logs();
    let config = rabbit_config();
    let p = config.bus.prefix.clone();
    let store = Store::memory().with_personal_data(&personal()).unwrap();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let bus = bus.with_keys(&store);
    let carol = Person::new("carol");

    // A sealed body, taken from a queue nobody consumes.
    let declaring = rabbit_bus_with(&config).await.unwrap().with_keys(&store);
    let (tx, _rx) = mpsc::unbounded_channel();
    declaring.subscribe(reader("Parked", tx)).await.unwrap();
    declaring.shutdown(Duration::from_secs(5)).await.unwrap();
    bus.publish(EventEnvelope::wrap(carol.registered()))
        .await
        .unwrap();
    let (_connection, ch) = channel().await;
    let parked = format!("{p}.evt.Parked");
    wait_for_depth(&ch, &parked, 1).await;
    let got = ch
        .basic_get(parked.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    let body: Value = serde_json::from_slice(&got.delivery.data).unwrap();
    let sealed = |field: &str| {
        body["payload"][field][ENCRYPTED_KEY]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // One character of the email's ciphertext changed; the name's value moved into the
    // email field.
    let mut changed = body.clone();
    let text = sealed("email");
    let mut chars: Vec<char> = text.chars().collect();
    let at = chars.len() - 6;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    changed["payload"]["email"][ENCRYPTED_KEY] = Value::String(chars.into_iter().collect());
    changed["id"] = Value::String("tampered-1".into());
    let mut moved = body.clone();
    moved["payload"]["email"][ENCRYPTED_KEY] = Value::String(sealed("name"));
    moved["id"] = Value::String("moved-1".into());

    let mut dead = bus.dead_letters().await.unwrap();
    let (ran_tx, mut ran_rx) = mpsc::unbounded_channel();
    bus.subscribe(reader("Checked", ran_tx).with_max_retries(3))
        .await
        .unwrap();
    for (id, body) in [("tampered-1", &changed), ("moved-1", &moved)] {
        ch.basic_publish(
            format!("{p}.events").as_str().into(),
            CustomerRegistered::TOPIC.into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(body).unwrap(),
            BasicProperties::default().with_message_id(id.into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mut letters = BTreeMap::new();
    for _ in 0..2 {
        let letter = tokio::time::timeout(WAIT, dead.recv())
            .await
            .expect("a dead letter")
            .unwrap();
        letters.insert(letter.message_id().to_owned(), letter);
    }
    for id in ["tampered-1", "moved-1"] {
        let letter = &letters[id];
        assert_eq!(letter.handler(), "Checked");
        assert_eq!(letter.attempts(), 1, "dead-lettered at once, never retried");
        let reason = letter.reason();
        assert!(
            reason.contains(CustomerRegistered::TYPE_NAME)
                && reason.contains("field email")
                && reason.contains("does not authenticate"),
            "{reason}"
        );
        for plain in carol.plaintexts() {
            assert!(!reason.contains(plain));
        }
        // The dead letter holds the body as it came: sealed.
        let data = letter.message().payload_json().unwrap();
        assert!(data["email"].get(ENCRYPTED_KEY).is_some(), "{data}");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), ran_rx.recv())
            .await
            .is_err(),
        "the handler never saw a value that does not open"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    let text = logs.text();
    for plain in carol.plaintexts() {
        assert!(!text.contains(plain), "{plain:?} in the logs");
    }
    delete_queues(
        &ch,
        &queues_of(
            &p,
            &[
                parked,
                format!("{p}.evt.Checked"),
                format!("{p}.deadletter.all"),
            ],
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_of_personal_events_is_refused_without_keys() {
    let _ = logs();
    let mut config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let e = bus
        .subscribe(reader("Mailer", tx.clone()))
        .await
        .unwrap_err();
    assert!(matches!(e, BusError::KeysRequired { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("\"Mailer\"")
            && text.contains(CustomerRegistered::TYPE_NAME)
            && text.contains("bus.with_keys(&store)"),
        "{text}"
    );
    // Refused, so the name is free again once keys are given.
    let store = Store::memory().with_personal_data(&personal()).unwrap();
    let bus = bus.with_keys(&store);
    bus.subscribe(reader("Mailer", tx.clone())).await.unwrap();

    // A partition key that travels encrypted cannot choose a partition.
    let e = bus
        .subscribe(reader("ByEmail", tx.clone()).with_partition_by("email"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("\"email\"") && e.to_string().contains("customer_id"),
        "{e}"
    );
    // A store that was not told of the event cannot open it.
    let bare = rabbit_bus_with(&config)
        .await
        .unwrap()
        .with_keys(&Store::memory());
    let e = bare
        .subscribe(reader("Unknown", tx.clone()))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("does not encrypt") && e.to_string().contains("with_personal_data"),
        "{e}"
    );

    // `bus.keys = "store"`: the store given to `with_store` gives the keys.
    config.bus.keys = orkestra_runtime::KeysMode::Store;
    let configured = rabbit_bus_with(&config).await.unwrap();
    let e = configured
        .subscribe(reader("Early", tx.clone()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bus.with_store(&store)"), "{e}");
    let configured = configured.with_store(&store);
    configured
        .subscribe(reader("Early", tx.clone()))
        .await
        .unwrap();

    // Appending and publishing a personal event on a keyless RabbitMQ bus is refused
    // before anything is stored.
    let keyless = rabbit_bus_with(&rabbit_config()).await.unwrap();
    let dan = Person::new("dan");
    let stream = format!("customer-{}", dan.subject);
    let e = store
        .append_and_publish(
            &keyless,
            &stream,
            ExpectedVersion::NoStream,
            vec![EventEnvelope::wrap(dan.registered())],
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e:?}");
    assert!(e.to_string().contains("bus.with_keys(&store)"), "{e}");
    assert!(store.read_stream(&stream, 0, 10).await.unwrap().is_empty());
    // So is the relay that would publish the store's events on it.
    let e = orkestra_runtime::relay::Relay::new(store.clone(), keyless.clone())
        .start()
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("bus.with_keys(&store)")
            && e.to_string().contains(CustomerRegistered::TYPE_NAME),
        "{e}"
    );

    // In-process, events stay in memory: no keys needed.
    Bus::in_process()
        .subscribe(reader("Mailer", tx))
        .await
        .unwrap();
    for b in [bus, bare, configured, keyless] {
        let _ = b.shutdown(Duration::from_secs(5)).await;
    }
}
