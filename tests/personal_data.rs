//! Personal data declared in the schema (`orkestra-gen/tests/golden/personal/customers.yaml`),
//! driven through the generated code on the memory store: typed events read back plain,
//! then, once the subject is forgotten, decode into the same generated types with their
//! replacements (and `redacted()` naming the paths); a projection rebuilt after `forget`
//! shows the replacements; the aggregate with personal state still loads; the bindings declare the personal events they receive; and the generated
//! `Wiring::start` refuses a store that was not given the namespace's description.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use orkestra_runtime::projection::{ProjectionContext, Projections};
use orkestra_runtime::{
    Bus, Command, Event, EventData, ExpectedVersion, HandlerContext, HandlerError, Metadata,
    RecordedEvent, Store, new_id,
};
use orkestra_tests::personal::customers::aggregates::{
    Customer, CustomerEvent, CustomerRepository, CustomerState,
};
use orkestra_tests::personal::customers::commands::{MoveCustomer, RegisterCustomer};
use orkestra_tests::personal::customers::events::{
    CustomerMoved, CustomerRegistered, NewsletterSent,
};
use orkestra_tests::personal::customers::handlers::{
    self, AuditEvent, Mailing, MailingEvent, Welcome,
};
use orkestra_tests::personal::customers::projections::{self, DirectoryEvent};
use orkestra_tests::personal::customers::types::{Address, Phone, Tier};
use orkestra_tests::personal::customers::{Wiring, personal};

/// The store as an application builds it: given the namespace's description.
fn store() -> Store {
    Store::memory()
        .with_personal_data(&personal::data())
        .expect("the generated description is accepted")
}

fn registered(customer: &str, email: &str) -> CustomerRegistered {
    CustomerRegistered {
        customer_id: customer.into(),
        email: email.into(),
        name: "Ada Lovelace".into(),
        address: Address {
            street: "12 St James's Square".into(),
            city: "London".into(),
        },
        phones: vec![
            Phone {
                label: "home".into(),
                number: "+44 20 7946 0000".into(),
            },
            Phone {
                label: "work".into(),
                number: "+44 20 7946 0001".into(),
            },
        ],
        birthday: Some(chrono::NaiveDate::from_ymd_opt(1815, 12, 10).unwrap()),
        tier: Tier::Gold,
        country: "GB".into(),
        registered: chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .to_utc(),
    }
}

fn moved(customer: &str) -> CustomerMoved {
    CustomerMoved {
        customer_id: customer.into(),
        address: Address {
            street: "1 Downing Street".into(),
            city: "London".into(),
        },
    }
}

fn data<D: orkestra_runtime::EventPayload>(payload: D) -> EventData {
    EventData::from_event(&Event::new(payload, Metadata::new()).unwrap()).unwrap()
}

async fn append_customer(store: &Store, customer: &str, email: &str) -> String {
    let stream = format!("customer-{customer}");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![
                data(registered(customer, email)),
                data(moved(customer)),
                data(NewsletterSent {
                    customer_id: customer.into(),
                }),
            ],
        )
        .await
        .unwrap();
    stream
}

async fn read(store: &Store, stream: &str) -> Vec<RecordedEvent> {
    store.read_stream(stream, 0, 10).await.unwrap()
}

#[tokio::test]
async fn typed_events_read_back_plain_then_as_their_replacements_once_forgotten() {
    let store = store();
    let ada = format!("ada-{}", new_id());
    let bob = format!("bob-{}", new_id());
    let stream = append_customer(&store, &ada, "ada@example.com").await;
    let bob_stream = append_customer(&store, &bob, "bob@example.com").await;

    // Before: every reader gets the plain values, nothing is redacted.
    let events = read(&store, &stream).await;
    assert_eq!(events.len(), 3);
    let first = events[0].decode::<CustomerRegistered>().unwrap();
    assert_eq!(first.data, registered(&ada, "ada@example.com"));
    assert_eq!(
        events[1].decode::<CustomerMoved>().unwrap().data,
        moved(&ada)
    );
    assert!(events.iter().all(|e| e.redacted().is_empty()));

    let forgotten = store.forget(&ada).await.unwrap();
    assert!(forgotten.key_deleted);

    // After: the same generated types decode, with the schema's replacements.
    let events = read(&store, &stream).await;
    let after = events[0].decode::<CustomerRegistered>().unwrap().data;
    assert_eq!(
        after,
        CustomerRegistered {
            customer_id: ada.clone(),
            email: String::new(),
            name: "(erased)".into(),
            address: Address {
                street: String::new(),
                city: "London".into(),
            },
            phones: vec![
                Phone {
                    label: "home".into(),
                    number: String::new(),
                },
                Phone {
                    label: "work".into(),
                    number: String::new(),
                },
            ],
            birthday: None,
            tier: Tier::Standard,
            country: String::new(),
            registered: registered(&ada, "").registered,
        }
    );
    let mut redacted = events[0].redacted().to_vec();
    redacted.sort();
    assert_eq!(
        redacted,
        [
            "address.street",
            "birthday",
            "country",
            "email",
            "name",
            "phones[0].number",
            "phones[1].number",
            "tier",
        ]
    );
    // A personal field of a named type is sealed whole: its replacement is an object of
    // the type's empty values.
    assert_eq!(
        events[1].decode::<CustomerMoved>().unwrap().data,
        CustomerMoved {
            customer_id: ada.clone(),
            address: Address {
                street: String::new(),
                city: String::new(),
            },
        }
    );
    assert_eq!(events[1].redacted(), ["address"]);
    // An event without personal data is untouched.
    assert!(events[2].redacted().is_empty());
    assert_eq!(
        events[2]
            .decode::<NewsletterSent>()
            .unwrap()
            .data
            .customer_id,
        ada
    );

    // Another customer's data is intact.
    let bob_events = read(&store, &bob_stream).await;
    assert_eq!(
        bob_events[0].decode::<CustomerRegistered>().unwrap().data,
        registered(&bob, "bob@example.com")
    );
    assert!(bob_events[0].redacted().is_empty());

    // And the forgotten customer never gets a key again.
    let again = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![data(registered(&ada, "ada@new.example"))],
        )
        .await
        .unwrap_err();
    assert!(again.to_string().contains("is forgotten"), "{again}");
}

/// The customer as a user writes it: the state keeps the (personal) email.
struct Customers;

impl Customer for Customers {
    fn apply(state: &mut CustomerState, event: &CustomerEvent) {
        match event {
            CustomerEvent::CustomerRegistered(e) => {
                state.customer_id = Some(e.customer_id.clone());
                state.email = Some(e.email.clone());
                state.city = Some(e.address.city.clone());
            }
            CustomerEvent::CustomerMoved(e) => {
                state.city = Some(e.address.city.clone());
                state.moves += 1;
            }
        }
    }

    async fn register_customer(
        &self,
        state: &CustomerState,
        command: &Command<RegisterCustomer>,
    ) -> Result<Vec<CustomerEvent>, HandlerError> {
        if state.customer_id.is_some() {
            return Err(HandlerError::reject("already registered"));
        }
        let mut event = registered(&command.customer_id, &command.email);
        event.name = command.name.clone();
        event.address = Address {
            street: command.street.clone(),
            city: command.city.clone(),
        };
        Ok(vec![CustomerEvent::CustomerRegistered(event)])
    }

    async fn move_customer(
        &self,
        _state: &CustomerState,
        command: &Command<MoveCustomer>,
    ) -> Result<Vec<CustomerEvent>, HandlerError> {
        Ok(vec![CustomerEvent::CustomerMoved(CustomerMoved {
            customer_id: command.customer_id.clone(),
            address: Address {
                street: command.street.clone(),
                city: command.city.clone(),
            },
        })])
    }
}

#[tokio::test]
async fn the_aggregate_with_personal_state_still_loads_after_forget() {
    let store = store();
    let customer = format!("cat-{}", new_id());
    let stream = format!("customer-{customer}");
    let repo = CustomerRepository::<Customers>::new(store.clone());
    let register = Command::new(
        RegisterCustomer {
            customer_id: customer.clone(),
            email: "cat@example.com".into(),
            name: "Cat".into(),
            street: "3 Abbey Road".into(),
            city: "London".into(),
        },
        Metadata::new(),
    )
    .unwrap();
    repo.execute(&stream, &register, None, &Customers, |a, s, c| {
        Box::pin(a.register_customer(s, c))
    })
    .await
    .unwrap();
    let move_to = Command::new(
        MoveCustomer {
            customer_id: customer.clone(),
            street: "4 Privet Drive".into(),
            city: "Little Whinging".into(),
        },
        Metadata::new(),
    )
    .unwrap();
    repo.execute(&stream, &move_to, None, &Customers, |a, s, c| {
        Box::pin(a.move_customer(s, c))
    })
    .await
    .unwrap();

    // `snapshot_every: 2`: the second event saved a snapshot, whose email the store
    // encrypted (the generated STATES) and gives back plain.
    let snapshot = store.load_snapshot(&stream).await.unwrap().expect("saved");
    assert!(
        snapshot.state.contains("cat@example.com"),
        "{}",
        snapshot.state
    );
    let (state, version) = repo.load(&stream).await.unwrap();
    assert_eq!(state.email.as_deref(), Some("cat@example.com"));
    assert_eq!(version, Some(1));

    store.forget(&customer).await.unwrap();

    // The snapshot is not used any more; the stream folds its redacted events (the
    // move's whole address was personal, so its city is gone too).
    assert!(store.load_snapshot(&stream).await.unwrap().is_none());
    let (state, version) = repo.load(&stream).await.unwrap();
    assert_eq!(version, Some(1));
    assert_eq!(
        state,
        CustomerState {
            customer_id: Some(customer.clone()),
            email: Some(String::new()),
            city: Some(String::new()),
            moves: 1,
        }
    );
}

struct Handlers;

impl Welcome for Handlers {
    async fn handle_event(
        &self,
        _event: Event<CustomerRegistered>,
        _ctx: HandlerContext,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl Mailing for Handlers {
    async fn handle_event(
        &self,
        _event: MailingEvent,
        _ctx: HandlerContext,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl handlers::Audit for Handlers {
    async fn handle_event(
        &self,
        _event: AuditEvent,
        _ctx: HandlerContext,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl handlers::Newsletter for Handlers {
    async fn handle_event(
        &self,
        _event: Event<NewsletterSent>,
        _ctx: HandlerContext,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn types(events: &[orkestra_runtime::keys::PersonalEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.event_type()).collect()
}

#[test]
fn bindings_declare_the_personal_events_they_receive() {
    assert_eq!(
        types(handlers::welcome(Handlers).personal_data()),
        ["Shop.Customers.CustomerRegistered"]
    );
    // Of `CustomerRegistered` and `NewsletterSent`, only the first is personal.
    assert_eq!(
        types(handlers::mailing(Handlers).personal_data()),
        ["Shop.Customers.CustomerRegistered"]
    );
    assert_eq!(
        types(handlers::audit(Handlers).personal_data()),
        [
            "Shop.Customers.CustomerRegistered",
            "Shop.Customers.CustomerMoved"
        ]
    );
    assert!(handlers::newsletter(Handlers).personal_data().is_empty());
    assert_eq!(personal::EVENTS.len(), 2);
    assert_eq!(personal::STATES.len(), 1);
}

fn wiring() -> Wiring<Handlers, Handlers, Handlers, Handlers, Customers, Directory> {
    Wiring {
        welcome: Handlers,
        mailing: Handlers,
        audit: Handlers,
        newsletter: Handlers,
        customer: Customers,
        directory: Directory::default(),
    }
}

/// The directory read model: each customer's email and name, as the projection last
/// handled them.
#[derive(Clone, Default)]
struct Directory(Arc<Mutex<BTreeMap<String, (String, String)>>>);

impl Directory {
    fn entry(&self, customer: &str) -> Option<(String, String)> {
        self.0.lock().unwrap().get(customer).cloned()
    }
}

impl projections::Directory for Directory {
    async fn handle_event(
        &self,
        event: DirectoryEvent,
        _ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        let DirectoryEvent::CustomerRegistered(e) = event;
        self.0
            .lock()
            .unwrap()
            .insert(e.data.customer_id.clone(), (e.data.email, e.data.name));
        Ok(())
    }
}

#[tokio::test]
async fn a_projection_rebuilt_after_forget_shows_the_replacements() {
    let store = store();
    let (ada, bob) = (format!("ada-{}", new_id()), format!("bob-{}", new_id()));
    append_customer(&store, &ada, "ada@example.com").await;
    append_customer(&store, &bob, "bob@example.com").await;
    let directory = Directory::default();
    let all = Projections::new(store.clone()).add(projections::directory(directory.clone()));
    let running = all.start().await.unwrap();
    running
        .wait_for("Directory", store.head().await.unwrap().unwrap())
        .await
        .unwrap();
    let plain = |email: &str| Some((email.to_owned(), "Ada Lovelace".to_owned()));
    assert_eq!(directory.entry(&ada), plain("ada@example.com"));

    store.forget(&ada).await.unwrap();
    // The read model still holds what it copied: forgetting reaches the store only.
    assert_eq!(directory.entry(&ada), plain("ada@example.com"));
    // Rebuilt, it reads the store again: the forgotten customer's fields are their
    // replacements (`""` and the declared "(erased)"), the other customer's are intact.
    all.rebuild("Directory").await.unwrap();
    assert_eq!(
        directory.entry(&ada),
        Some((String::new(), "(erased)".to_owned()))
    );
    assert_eq!(directory.entry(&bob), plain("bob@example.com"));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn wiring_refuses_a_store_not_given_the_description() {
    let bus = Bus::in_process();
    let error = wiring()
        .start(&bus, &Store::memory())
        .await
        .expect_err("a store that would keep personal fields in plain text");
    assert_eq!(
        error.to_string(),
        "event \"Shop.Customers.CustomerRegistered\" has personal fields, but the memory \
         store does not encrypt them: give it the namespace's description at construction \
         (`store.with_personal_data(&<namespace>::personal::data())`)"
    );

    let started = wiring().start(&bus, &store()).await.unwrap();
    started.stop().await.unwrap();
}
