//! Orders and accounts with code generated from `schemas/`: commands, the events their
//! handlers publish, the handlers that react (single-event, multi-event and wildcard
//! bindings), one that keeps failing until it is dead-lettered, a dead-letter alarm (for
//! that failure only: a refusal is an answer, never a dead letter), and
//! the correlation and causation ids that tie it all together; then an aggregate
//! (`ledger::aggregates::Account`, from `schemas/ledger.yaml`) whose balance is the fold
//! of its own stream, with a withdrawal it refuses; its events reach the bus through the
//! relay (the store appends only), and a projection (`ledger::projections::Balances`)
//! keeps a read model of every balance from the store. Last, a process manager
//! (`fulfil::process_managers::Fulfilment`, from `schemas/fulfilment.yaml`) takes two
//! orders through payment: one paid on the second try and shipped, one cancelled by its
//! timer when no payment comes. Then a decision across streams
//! (`customers::decisions::Registration`, from `schemas/customers.yaml`): each customer
//! has a stream of its own, yet a username is taken once: the second customer asking
//! for it is refused. The customer's email and name are personal data: stored encrypted
//! with a key of the customer's own, and forgetting the customer (`store.forget`) leaves
//! the event readable with its replacements.
//!
//! In-process bus and embedded store by default; the same binary runs on RabbitMQ and
//! PostgreSQL by configuration alone (`ORKESTRA_BUS_ADAPTER=rabbitmq`,
//! `ORKESTRA_STORE_ADAPTER=postgres`, see `book/src/configuration.md`).

orkestra_runtime::include_generated!();

use accounts::commands::CreateAccount;
use customers::decisions::{
    RegistrationEmit, RegistrationEvent, RegistrationReads, RegistrationState,
};
use ledger::aggregates::{AccountEvent, AccountRepository, AccountState};
use orders::commands::{CancelOrder, PlaceOrder};
use orders::events::{OrderCancelled, OrderPlaced};
use orders::handlers::{OrderAuditEvent, OrderProjectorEvent};
use orkestra_runtime::projection::ProjectionContext;
use orkestra_runtime::relay::{RELAY_CHECKPOINT, Relay};
use orkestra_runtime::telemetry::{Logs, Telemetry, TraceTree};
use orkestra_runtime::{
    ActorType, Bus, Command, CommandEnvelope, CommandStatus, Config, DeadLetter, Event,
    EventEnvelope, ExpectedVersion, HandlerContext, HandlerError, Metadata, PublishMode, Store,
    Validate, ValidationError,
};
use serde_json::{Value, json};

fn short(id: &str) -> &str {
    &id[..8.min(id.len())]
}

impl Validate for CreateAccount {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.email.contains('@') {
            Ok(())
        } else {
            Err(ValidationError::new("invalid_email").with_field("email"))
        }
    }
}

/// Places orders: records `OrderPlaced` in the event store (`append_and_publish`; in relay
/// mode, as here, the relay publishes it).
struct Orders {
    store: Store,
}

impl orders::handlers::PlaceOrderHandler for Orders {
    async fn execute(
        &self,
        cmd: Command<PlaceOrder>,
        ctx: HandlerContext,
    ) -> Result<Value, HandlerError> {
        println!(
            "  PlaceOrderHandler      command {} ({} x {}, {} priority)",
            short(&cmd.id),
            cmd.quantity,
            cmd.product_id,
            cmd.priority
        );
        let order_id = format!("ord_{}", short(&cmd.id));
        let placed = OrderPlaced::from_command(
            &cmd,
            json!({
                "order_id": order_id,
                "product_id": cmd.product_id,
                "quantity": cmd.quantity,
                "placed_at": chrono::Utc::now().to_rfc3339(),
            }),
        )?;
        // Append first, then publish: subscribers only ever see stored events.
        let stream = format!("order-{order_id}");
        let envelope = EventEnvelope::wrap(placed);
        let stored = self
            .store
            .append_and_publish(
                ctx.bus(),
                &stream,
                ExpectedVersion::NoStream,
                vec![envelope],
            )
            .await
            .map_err(HandlerError::fail)?;
        println!(
            "  (stored {stream} version {} at position {} in the {} store)",
            stored.last_version,
            stored.last_position,
            self.store.adapter()
        );
        Ok(json!({ "order_id": order_id }))
    }
}

impl orders::handlers::CancelOrderHandler for Orders {
    async fn execute(
        &self,
        cmd: Command<CancelOrder>,
        ctx: HandlerContext,
    ) -> Result<Value, HandlerError> {
        let cancelled = Event::from_command(
            &cmd,
            OrderCancelled {
                order_id: cmd.order_id.clone(),
                reason: cmd.reason.clone(),
            },
        )?;
        ctx.publish(cancelled).await?;
        Ok(json!({ "order_id": cmd.order_id }))
    }
}

struct Mailer;

impl orders::handlers::SendOrderConfirmation for Mailer {
    async fn handle_event(
        &self,
        ev: Event<OrderPlaced>,
        _ctx: HandlerContext,
    ) -> Result<(), HandlerError> {
        println!(
            "  SendOrderConfirmation  event {}: correlation {}, caused by {}",
            short(&ev.id),
            short(&ev.metadata.correlation_id),
            short(ev.metadata.causation_id.as_deref().unwrap_or("-"))
        );
        Ok(())
    }
}

struct Projector;

impl orders::handlers::OrderProjector for Projector {
    async fn handle_event(
        &self,
        ev: OrderProjectorEvent,
        _ctx: HandlerContext,
    ) -> Result<(), HandlerError> {
        match ev {
            OrderProjectorEvent::OrderPlaced(e) => {
                println!("  OrderProjector         order {} placed", e.order_id)
            }
            OrderProjectorEvent::OrderCancelled(e) => {
                println!("  OrderProjector         order {} cancelled", e.order_id)
            }
        }
        Ok(())
    }
}

struct Audit;

impl orders::handlers::OrderAudit for Audit {
    async fn handle_event(
        &self,
        ev: OrderAuditEvent,
        _ctx: HandlerContext,
    ) -> Result<(), HandlerError> {
        let what = match &ev {
            OrderAuditEvent::OrderPlaced(_) => "OrderPlaced",
            OrderAuditEvent::OrderCancelled(_) => "OrderCancelled",
            OrderAuditEvent::Other(raw) => raw.event_type.as_str(),
        };
        println!("  OrderAudit (orders.events.#) saw {what}");
        Ok(())
    }
}

struct SearchIndex;

impl orders::handlers::UpdateSearchIndex for SearchIndex {
    async fn handle_event(
        &self,
        _ev: Event<OrderPlaced>,
        ctx: HandlerContext,
    ) -> Result<(), HandlerError> {
        println!(
            "  UpdateSearchIndex      attempt {}: index unreachable",
            ctx.attempt()
        );
        Err(HandlerError::fail("search index unreachable"))
    }
}

/// Raised for every dead letter of the bus (a `{ dead_letters: true }` binding).
struct Alarm;

impl orders::handlers::DeadLetterAlarm for Alarm {
    async fn handle_dead_letter(
        &self,
        letter: DeadLetter,
        _ctx: HandlerContext,
    ) -> Result<(), HandlerError> {
        println!(
            "  DeadLetterAlarm        {} gave up on message {}",
            letter.handler(),
            short(letter.message_id())
        );
        Ok(())
    }
}

/// The credit account: how each event changes the state, and what each command decides.
struct Ledger;

impl ledger::aggregates::Account for Ledger {
    fn apply(state: &mut AccountState, event: &AccountEvent) {
        match event {
            AccountEvent::AccountOpened(e) => {
                state.open = true;
                state.owner = Some(e.owner.clone());
            }
            AccountEvent::MoneyDeposited(e) => state.balance += e.amount,
            AccountEvent::MoneyWithdrawn(e) => state.balance -= e.amount,
        }
    }

    async fn open_account(
        &self,
        state: &AccountState,
        cmd: &Command<ledger::commands::OpenAccount>,
    ) -> Result<Vec<AccountEvent>, HandlerError> {
        if state.open {
            return Err(HandlerError::reject("the account is already open"));
        }
        Ok(vec![AccountEvent::AccountOpened(
            ledger::events::AccountOpened {
                account_id: cmd.account_id.clone(),
                owner: cmd.owner.clone(),
            },
        )])
    }

    async fn deposit(
        &self,
        state: &AccountState,
        cmd: &Command<ledger::commands::Deposit>,
    ) -> Result<Vec<AccountEvent>, HandlerError> {
        if !state.open {
            return Err(HandlerError::reject("the account is not open"));
        }
        Ok(vec![AccountEvent::MoneyDeposited(
            ledger::events::MoneyDeposited {
                account_id: cmd.account_id.clone(),
                amount: cmd.amount,
            },
        )])
    }

    async fn withdraw(
        &self,
        state: &AccountState,
        cmd: &Command<ledger::commands::Withdraw>,
    ) -> Result<Vec<AccountEvent>, HandlerError> {
        if state.balance < cmd.amount {
            return Err(HandlerError::reject(format!(
                "balance {} is below {}",
                state.balance, cmd.amount
            )));
        }
        Ok(vec![AccountEvent::MoneyWithdrawn(
            ledger::events::MoneyWithdrawn {
                account_id: cmd.account_id.clone(),
                amount: cmd.amount,
            },
        )])
    }
}

/// Reacts to withdrawals the aggregate published.
struct WithdrawalAlert;

impl ledger::handlers::LargeWithdrawalAlert for WithdrawalAlert {
    async fn handle_event(
        &self,
        event: Event<ledger::events::MoneyWithdrawn>,
        _ctx: HandlerContext,
    ) -> Result<(), HandlerError> {
        println!(
            "  LargeWithdrawalAlert   {} withdrew {}",
            event.account_id, event.amount
        );
        Ok(())
    }
}

/// Balances per account, in memory. The projection is at least once on this store (up to
/// a batch again after a crash), so each account remembers the last position it applied
/// and ignores anything at or before it: applying twice changes nothing.
#[derive(Clone, Default)]
struct Balances(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Balance>>>);

/// An account's balance and the position of the last event applied to it.
type Balance = (i64, Option<u64>);

impl ledger::projections::Balances for Balances {
    async fn handle_event(
        &self,
        event: ledger::projections::BalancesEvent,
        ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        use ledger::projections::BalancesEvent as E;
        let (account, delta) = match &event {
            E::AccountOpened(e) => (e.account_id.clone(), 0),
            E::MoneyDeposited(e) => (e.account_id.clone(), e.amount),
            E::MoneyWithdrawn(e) => (e.account_id.clone(), -e.amount),
        };
        let mut balances = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (balance, applied) = balances.entry(account).or_insert((0, None));
        if applied.is_none_or(|last| ctx.position() > last) {
            *balance += delta;
            *applied = Some(ctx.position());
        }
        Ok(())
    }
}

/// The example's payment service, warehouse and cancellations: each answers a command
/// with an event in the store, where the process manager reads it. A card is declined on
/// its first charge; an order of 13 cents never gets an answer (its timer cancels it).
#[derive(Clone)]
struct Services {
    store: Store,
    charged: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Services {
    async fn answer<D: orkestra_runtime::EventPayload, P>(
        &self,
        ctx: &HandlerContext,
        command: &Command<P>,
        event: D,
    ) -> Result<Value, HandlerError> {
        let event = Event::new(
            event,
            Metadata::derive(&command.metadata, command.id.clone()),
        )
        .map_err(HandlerError::reject)?;
        self.store
            .append_and_publish(
                ctx.bus(),
                &format!("fulfil-{}", short(&command.id)),
                ExpectedVersion::Any,
                vec![EventEnvelope::wrap(event)],
            )
            .await
            .map_err(HandlerError::fail)?;
        Ok(Value::Null)
    }
}

impl fulfil::handlers::Payments for Services {
    async fn execute(
        &self,
        command: Command<fulfil::commands::ChargeCard>,
        ctx: HandlerContext,
    ) -> Result<Value, HandlerError> {
        let order_id = command.order_id.clone();
        println!("  charge {order_id}: {} cents", command.amount_cents);
        if command.amount_cents == 13 {
            return Ok(Value::Null);
        }
        let first = self
            .charged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(order_id.clone());
        if first {
            self.answer(&ctx, &command, fulfil::events::PaymentFailed { order_id })
                .await
        } else {
            self.answer(&ctx, &command, fulfil::events::PaymentReceived { order_id })
                .await
        }
    }
}

impl fulfil::handlers::Warehouse for Services {
    async fn execute(
        &self,
        command: Command<fulfil::commands::ShipOrder>,
        ctx: HandlerContext,
    ) -> Result<Value, HandlerError> {
        println!("  ship {}", command.order_id);
        let order_id = command.order_id.clone();
        self.answer(&ctx, &command, fulfil::events::OrderShipped { order_id })
            .await
    }
}

impl fulfil::handlers::Cancellations for Services {
    async fn execute(
        &self,
        command: Command<fulfil::commands::CancelOrder>,
        ctx: HandlerContext,
    ) -> Result<Value, HandlerError> {
        println!("  cancel {}: {}", command.order_id, command.reason);
        let order_id = command.order_id.clone();
        self.answer(&ctx, &command, fulfil::events::OrderCancelled { order_id })
            .await
    }
}

/// The flow: charge, charge once more after a failure, ship once paid; cancel when the
/// `payment` timer (1 s) fires first.
struct Fulfilment;

impl fulfil::process_managers::Fulfilment for Fulfilment {
    async fn handle(
        &self,
        state: &mut fulfil::process_managers::FulfilmentState,
        event: &fulfil::process_managers::FulfilmentEvent,
        ctx: &mut fulfil::process_managers::FulfilmentContext,
    ) -> Result<(), HandlerError> {
        use fulfil::commands::{CancelOrder, ChargeCard, ShipOrder};
        use fulfil::process_managers::{
            FulfilmentCommand as C, FulfilmentEvent as E, FulfilmentTimer as T,
        };
        let order_id = ctx.key().to_owned();
        match event {
            E::OrderPlaced(e) => {
                state.amount_cents = e.amount_cents;
                ctx.dispatch(C::ChargeCard(ChargeCard {
                    order_id,
                    amount_cents: e.amount_cents,
                }));
                ctx.set_timer(T::Payment);
            }
            E::PaymentFailed(_) if state.attempts == 0 => {
                state.attempts += 1;
                ctx.dispatch(C::ChargeCard(ChargeCard {
                    order_id,
                    amount_cents: state.amount_cents,
                }));
            }
            E::PaymentFailed(_) => {
                ctx.clear_timer(T::Payment);
                ctx.dispatch(C::CancelOrder(CancelOrder {
                    order_id,
                    reason: "declined twice".into(),
                }));
            }
            E::PaymentReceived(_) => {
                ctx.clear_timer(T::Payment);
                ctx.dispatch(C::ShipOrder(ShipOrder { order_id }));
            }
            E::OrderShipped(_) | E::OrderCancelled(_) => {}
        }
        Ok(())
    }

    async fn on_timeout(
        &self,
        _state: &mut fulfil::process_managers::FulfilmentState,
        _timer: fulfil::process_managers::FulfilmentTimer,
        ctx: &mut fulfil::process_managers::FulfilmentContext,
    ) -> Result<(), HandlerError> {
        let order_id = ctx.key().to_owned();
        ctx.dispatch(fulfil::process_managers::FulfilmentCommand::CancelOrder(
            fulfil::commands::CancelOrder {
                order_id,
                reason: "no payment within 1s".into(),
            },
        ));
        Ok(())
    }
}

/// Places two orders and runs the flow until both instances finished.
async fn fulfilment(store: &Store, bus: &Bus) -> Result<(), Box<dyn std::error::Error>> {
    println!("fulfilment:");
    let services = Services {
        store: store.clone(),
        charged: Default::default(),
    };
    // The handlers and the process manager, one struct, one call.
    let running = fulfil::Wiring {
        payments: services.clone(),
        warehouse: services.clone(),
        cancellations: services.clone(),
        fulfilment: Fulfilment,
    }
    .start(bus, store)
    .await?;
    let orders = [
        (format!("ord_{}", short(&orkestra_runtime::new_id())), 4_200),
        (format!("ord_{}", short(&orkestra_runtime::new_id())), 13),
    ];
    for (order_id, amount_cents) in &orders {
        let event = Event::new(
            fulfil::events::OrderPlaced {
                order_id: order_id.clone(),
                amount_cents: *amount_cents,
            },
            Metadata::new(),
        )?;
        store
            .append_and_publish(
                bus,
                &format!("order-{order_id}"),
                ExpectedVersion::NoStream,
                vec![EventEnvelope::wrap(event)],
            )
            .await?;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for (order_id, _) in &orders {
        loop {
            let last = store
                .read_stream_backwards(&format!("pm-fulfilment-{order_id}"), u64::MAX, 1)
                .await?;
            let step = last.first().map(|e| e.data()).transpose()?;
            if let Some(step) = step.filter(|s| s["finished"] == json!(true)) {
                println!("  {order_id} finished: state {}", step["state"]);
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("order {order_id} did not finish").into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    running.stop().await?;
    Ok(())
}

/// Registration: a customer registers once, and a username belongs to whoever took it
/// first. The state is the fold of every `CustomerRegistered` tagged with this command's
/// customer or username, whatever stream holds it; the handler appends on the condition
/// that none was stored since it read, and decides again if one was.
struct Registrar;

impl customers::decisions::Registration for Registrar {
    fn apply(state: &mut RegistrationState, event: &RegistrationEvent, matched: RegistrationReads) {
        let RegistrationEvent::CustomerRegistered(e) = event;
        if matched.customer {
            state.registered = true;
        }
        if matched.username {
            state.username_taken_by = Some(e.customer_id.clone());
        }
    }

    async fn decide(
        &self,
        state: &RegistrationState,
        cmd: &Command<customers::commands::RegisterCustomer>,
    ) -> Result<Vec<RegistrationEmit>, HandlerError> {
        if state.registered {
            return Err(HandlerError::reject(format!(
                "customer {} is already registered",
                cmd.customer_id
            )));
        }
        if let Some(holder) = &state.username_taken_by {
            return Err(HandlerError::reject(format!(
                "username {} is taken by customer {holder}",
                cmd.username
            )));
        }
        Ok(vec![RegistrationEmit::CustomerRegistered(
            customers::events::CustomerRegistered {
                customer_id: cmd.customer_id.clone(),
                username: cmd.username.clone(),
                email: cmd.email.clone(),
                name: cmd.name.clone(),
            },
        )])
    }
}

/// Two customers ask for one username (unique to this run, so a store kept from an
/// earlier run does not refuse both): the first gets it, the second is refused.
async fn registration(store: &Store, bus: &Bus) -> Result<(), Box<dyn std::error::Error>> {
    println!("customers (a decision across streams):");
    let started = customers::Wiring {
        registration: Registrar,
    }
    .start(bus, store)
    .await?;
    let username = format!("ada_{}", short(&orkestra_runtime::new_id()));
    let customers = [
        format!("cust_{}", short(&orkestra_runtime::new_id())),
        format!("cust_{}", short(&orkestra_runtime::new_id())),
    ];
    for customer in &customers {
        let command = customers::commands::RegisterCustomer::new(
            json!({
                "customer_id": customer,
                "username": username,
                "email": format!("{customer}@example.com"),
                "name": "Ada Lovelace",
            }),
            Metadata::new(),
        )?;
        let receipt = bus
            .call(
                CommandEnvelope::wrap(command),
                std::time::Duration::from_secs(10),
            )
            .await?;
        match receipt.status() {
            CommandStatus::Succeeded => println!(
                "  registration accepted: {customer} as {username}, reply {}",
                receipt.reply().cloned().unwrap_or_default()
            ),
            CommandStatus::Rejected => println!(
                "  registration refused: {customer} as {username}: {}",
                receipt.error().unwrap_or_default()
            ),
            status => {
                return Err(format!(
                    "registering {customer}: {status:?}: {}",
                    receipt.error().unwrap_or_default()
                )
                .into());
            }
        }
    }
    // The store indexes the event by its tags: this query is what the decision reads.
    let taken = store
        .read_query(
            &orkestra_runtime::Query::of(orkestra_runtime::QueryItem::tags([
                orkestra_runtime::Tag::new("username", &username)?,
            ])),
            0,
            10,
        )
        .await?;
    for event in &taken {
        let tags: Vec<&str> = event.tags().iter().map(|t| t.as_str()).collect();
        println!(
            "  stored {} in {} with tags {}",
            event.event_type(),
            event.stream(),
            tags.join(", ")
        );
    }
    // Personal data: the accepted customer's event is stored with its email and name
    // encrypted; reading gives them back. Forgetting the customer deletes its key: the
    // event stays (the username stays taken), its personal fields read as replacements.
    let stream = format!("customer-{}", customers[0]);
    let show =
        |when: &str, event: &orkestra_runtime::Event<customers::events::CustomerRegistered>| {
            println!(
                "  {when}: {} <{}> named {:?}, redacted {:?}",
                event.data.customer_id,
                event.data.email,
                event.data.name,
                event.redacted()
            )
        };
    let read = store.read_stream(&stream, 0, 1).await?;
    show("read back", &read[0].decode()?);
    let forgotten = store.forget(&customers[0]).await?;
    println!(
        "  forgot {} (key deleted: {}, orkestra.SubjectForgotten at position {})",
        forgotten.subject, forgotten.key_deleted, forgotten.position
    );
    let read = store.read_stream(&stream, 0, 1).await?;
    show("after forget", &read[0].decode()?);
    started.stop().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // A sentence, then the causes it does not already spell out: never a Debug dump.
            let mut shown = error.to_string();
            eprintln!("error: {shown}");
            let mut source = error.source();
            while let Some(cause) = source {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                shown = text;
                source = cause.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Spans are collected in memory and printed as a tree at the end; set RUST_LOG=info
    // to see the structured log lines too.
    let tree = TraceTree::new();
    let mut telemetry = Telemetry::new("orders-example")
        .logs(if std::env::var_os("RUST_LOG").is_some() {
            Logs::Pretty
        } else {
            Logs::Off
        })
        .trace_tree(tree.clone());
    // `ORKESTRA_METRICS_ADDR=127.0.0.1:9464`: `/metrics`, `/healthz` and `/readyz` there,
    // and the example keeps serving after its flow until Ctrl-C.
    let metrics_addr = std::env::var("ORKESTRA_METRICS_ADDR").ok();
    if let Some(addr) = &metrics_addr {
        telemetry = telemetry.serve(addr.clone());
    }
    // Installed before the bus and the store are built: they record into its meters.
    let telemetry = telemetry.init().map_err(|e| match &metrics_addr {
        Some(_) => format!("ORKESTRA_METRICS_ADDR: {e}").into(),
        None => Box::<dyn std::error::Error>::from(e),
    })?;

    let config = Config::load()?;
    let bus = Bus::from_config(&config).await?;
    let mut dead_letters = bus.dead_letters().await?;

    // Handlers only append (`[store] publish = "relay"`, set here whatever the file
    // says): the relay is the one path from the store to the bus, so a crash between an
    // append and its publish loses nothing.
    let store = Store::from_config(&config)
        .await?
        .with_publish(PublishMode::Relay)
        // The personal fields the schemas declare: encrypted on append, decrypted on read.
        .with_personal_data(&customers::personal::data())?;
    // With `[bus] inbox = "store"`, once-handlers keep their record in this store; with
    // the store's keys, RabbitMQ carries personal fields encrypted (in-process: ignored).
    let bus = bus.with_store(&store).with_keys(&store);
    // `/readyz` answers 503 while the broker is unreachable or the store does not answer.
    telemetry.ready_when(&bus).ready_when(&store);
    println!(
        "bus: {}, store: {}",
        config.bus.adapter.name(),
        store.adapter()
    );
    // Every binding of the namespace at once: leaving one out does not compile.
    orders::Wiring {
        place_order_handler: Orders {
            store: store.clone(),
        },
        cancel_order_handler: Orders {
            store: store.clone(),
        },
        send_order_confirmation: Mailer,
        order_projector: Projector,
        order_audit: Audit,
        update_search_index: SearchIndex,
        dead_letter_alarm: Alarm,
    }
    .start(&bus, &store)
    .await?;

    // A store that already holds events published the direct way (an older release, or
    // this example before the relay): start the relay at its head instead of publishing
    // that history again.
    if store.load_checkpoint(RELAY_CHECKPOINT).await?.is_none() {
        store
            .save_checkpoint(RELAY_CHECKPOINT, store.head().await?)
            .await?;
    }
    let mut relay = Relay::new(store.clone(), bus.clone()).start().await?;
    telemetry.ready_when(&relay);

    let metadata = Metadata::new()
        .with_actor("user_123", ActorType::User)
        .with_source("web");
    println!(
        "dispatching PlaceOrder (correlation {})",
        short(&metadata.correlation_id)
    );
    let command = PlaceOrder::new(json!({"product_id": "sku_42", "quantity": 3}), metadata)?;
    let receipt = bus.dispatch(CommandEnvelope::wrap(command)).await?;
    println!(
        "command {}: {:?} after {} attempt(s), reply {}",
        short(receipt.id()),
        receipt.status(),
        receipt.attempts(),
        receipt.reply().cloned().unwrap_or_default()
    );

    let letter = dead_letters.recv().await?;
    println!(
        "dead letter: {} gave up on {} after {} runs: {}",
        letter.handler(),
        letter.topic(),
        letter.attempts(),
        letter.reason()
    );

    // The aggregate: one subscription per command, each loading the account's stream,
    // deciding, appending with the expected version and replying; the relay publishes.
    // `ledger::Wiring` has a field per binding (the aggregate, the projection, the
    // handler) and starts them all.
    let balances = Balances::default();
    let ledger_started = ledger::Wiring {
        account: Ledger,
        balances: balances.clone(),
        large_withdrawal_alert: WithdrawalAlert,
    }
    .start(&bus, &store)
    .await?;
    let running = ledger_started
        .projections()
        .ok_or("the ledger namespace declares a projection")?;
    let account = format!("acc_{}", short(&orkestra_runtime::new_id()));
    println!("ledger account {account}:");
    let commands = [
        CommandEnvelope::wrap(ledger::commands::OpenAccount::new(
            json!({"account_id": account, "owner": "Ada"}),
            Metadata::new(),
        )?),
        CommandEnvelope::wrap(ledger::commands::Deposit::new(
            json!({"account_id": account, "amount": 100}),
            Metadata::new(),
        )?),
        CommandEnvelope::wrap(ledger::commands::Withdraw::new(
            json!({"account_id": account, "amount": 30}),
            Metadata::new(),
        )?),
        CommandEnvelope::wrap(ledger::commands::Withdraw::new(
            json!({"account_id": account, "amount": 500}),
            Metadata::new(),
        )?),
    ];
    for command in commands {
        let topic = command.topic().to_owned();
        // `call` waits for the outcome on any bus. A refusal is the aggregate's answer:
        // `Rejected` with its reason, logged at info; no retry, no dead letter, no alarm.
        let receipt = bus
            .call(command, std::time::Duration::from_secs(10))
            .await?;
        match (receipt.status(), receipt.reply()) {
            (CommandStatus::Rejected, _) => println!(
                "  {topic}: Rejected: {} (an answer: no dead letter, no alarm)",
                receipt.error().unwrap_or_default()
            ),
            (status, Some(reply)) => println!("  {topic}: {status:?}, reply {reply}"),
            (status, None) => println!(
                "  {topic}: {status:?}: {}",
                receipt.error().unwrap_or_default()
            ),
        }
    }
    let head = store.head().await?.unwrap_or_default();
    relay.wait_for(head).await?;
    running.wait_for("Balances", head).await?;
    let read_model = balances
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&account)
        .map_or(0, |b| b.0);
    for status in running.status() {
        println!(
            "  projection {}: balance {read_model}, checkpoint {:?}, head {:?}, lag {}, {:?}",
            status.name, status.checkpoint, status.head, status.lag, status.state
        );
    }
    println!("  relay published up to position {:?}", relay.published());
    ledger_started.stop().await?;
    relay.stop().await?;
    let (state, version) = AccountRepository::<Ledger>::new(store.clone())
        .load(&format!("ledger-{account}"))
        .await?;
    println!(
        "  loaded: balance {} at version {}",
        state.balance,
        version.map_or("-".into(), |v| v.to_string())
    );

    fulfilment(&store, &bus).await?;
    registration(&store, &bus).await?;

    println!("rejected input:");
    for (what, result) in [
        (
            "PlaceOrder {quantity: 0}",
            PlaceOrder::new(json!({"quantity": 0}), Metadata::new()).map(|_| ()),
        ),
        (
            "PlaceOrder {product_id: \"\", quantity: 0}",
            PlaceOrder::new(json!({"product_id": "", "quantity": 0}), Metadata::new()).map(|_| ()),
        ),
        (
            "CreateAccount {email: \"nope\"}",
            CreateAccount::new(json!({"email": "nope", "name": "Eve"}), Metadata::new())
                .map(|_| ()),
        ),
    ] {
        println!("  {what}: {}", result.unwrap_err());
    }

    telemetry.flush();
    println!("\ntrace of the flow:");
    print!("{}", tree.render());
    if let Some(addr) = telemetry.metrics_addr() {
        println!("\nserving http://{addr}/metrics, /healthz and /readyz; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}
