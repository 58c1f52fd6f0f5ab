//! The `orkestra` binary as an operator runs it, against the local broker: each test
//! has its own prefix (an `orkestra.toml` in a directory of its own, the broker URL in
//! `ORKESTRA_BUS_URL`) and deletes its queues after. Without a broker the tests skip,
//! unless `ORKESTRA_REQUIRE_SERVICES=1`, where they fail.
//! `relay skip`, `status` and `store` work on a SQLite store the test prepares, with no
//! broker.

#[allow(dead_code)]
#[path = "../../orkestra-runtime/tests/support/payloads.rs"]
mod payloads;

use std::path::PathBuf;
use std::process::{Command as Process, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use orkestra_runtime::{
    Bus, Command, CommandEnvelope, Event, HandlerError, Metadata, Payload, Subscription,
};
use payloads::{OrderPlaced, PlaceOrder};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

fn amqp_url() -> String {
    std::env::var("ORKESTRA_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// One test's bus: a prefix, a directory with its `orkestra.toml`, a channel.
struct Setup {
    prefix: String,
    dir: PathBuf,
    _connection: Connection,
    channel: Channel,
    /// Keeps the exchanges and the catch-all queue declared.
    bus: Option<Bus>,
}

impl Setup {
    /// `None` (skip) when the broker is not reachable and not required.
    async fn new() -> Option<Self> {
        Self::with_settings("").await
    }

    /// As [`Setup::new`], with more `[bus]` settings (TOML lines).
    async fn with_settings(settings: &str) -> Option<Self> {
        let connection =
            match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
                Ok(c) => c,
                Err(e) => {
                    assert!(
                        std::env::var("ORKESTRA_REQUIRE_SERVICES").as_deref() != Ok("1"),
                        "RabbitMQ is required (ORKESTRA_REQUIRE_SERVICES=1) but unavailable: {e}"
                    );
                    eprintln!("SKIPPED: RabbitMQ is unavailable ({e})");
                    return None;
                }
            };
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let prefix = format!("orkestra-cli-{}", uuid::Uuid::new_v4().simple());
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("orkestra.toml"),
            format!(
                "[bus]\nadapter = \"rabbitmq\"\nprefix = \"{prefix}\"\nretry_delay_ms = 100\nqueue_expiry_ms = 120000\n{settings}"
            ),
        )
        .unwrap();
        let mut setup = Self {
            prefix,
            dir,
            _connection: connection,
            channel,
            bus: None,
        };
        setup.bus = Some(Bus::from_config(&setup.config()).await.unwrap());
        Some(setup)
    }

    fn config(&self) -> orkestra_runtime::Config {
        orkestra_runtime::Config::from_file(self.dir.join("orkestra.toml"))
            .unwrap()
            .with_env_overrides(|name| (name == "ORKESTRA_BUS_URL").then(amqp_url))
            .unwrap()
    }

    fn bus(&self) -> &Bus {
        self.bus.as_ref().unwrap()
    }

    /// Runs `orkestra` in the test's directory.
    fn run(&self, args: &[&str]) -> Output {
        Process::new(env!("CARGO_BIN_EXE_orkestra"))
            .args(args)
            .current_dir(&self.dir)
            .env("ORKESTRA_BUS_URL", amqp_url())
            .env_remove("ORKESTRA_BUS_ADAPTER")
            .output()
            .unwrap()
    }

    /// Runs `orkestra` and expects exit 0; its standard output, the prefix and ages
    /// redacted.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.redact(&String::from_utf8_lossy(&out.stdout))
    }

    fn redact(&self, text: &str) -> String {
        redact(&text.replace(&self.prefix, "[prefix]"))
    }

    /// The ids `dlq list` shows, read from the unredacted output.
    fn ids(&self) -> Vec<String> {
        let out = self.run(&["dlq", "list", "--format", "json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Publishes a dead letter as the bus's consumer writes it.
    async fn plant(&self, id: &str, handler: &str) {
        let mut headers = FieldTable::default();
        let prefix = &self.prefix;
        for (k, v) in [
            ("x-orkestra-original-exchange", format!("{prefix}.commands")),
            (
                "x-orkestra-original-routing-key",
                PlaceOrder::TOPIC.to_owned(),
            ),
            ("x-orkestra-handler", handler.to_owned()),
            ("x-orkestra-error", format!("{handler} is down")),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            ),
        ] {
            headers.insert(k.into(), AMQPValue::LongString(v.into()));
        }
        headers.insert("x-orkestra-attempts".into(), AMQPValue::LongLongInt(4));
        let body = json!({
            "kind": "command", "id": id, "type": PlaceOrder::TYPE_NAME,
            "topic": PlaceOrder::TOPIC, "version": 1,
            "payload": {"product_id": "sku", "quantity": 1},
            "metadata": {
                "correlation_id": "corr-1", "actor_type": "user", "actor_id": "u1",
                "issued_at": "2026-01-02T03:04:05Z"
            },
        });
        self.channel
            .basic_publish(
                format!("{prefix}.deadletter").as_str().into(),
                PlaceOrder::TOPIC.into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&body).unwrap(),
                BasicProperties::default()
                    .with_message_id(id.into())
                    .with_delivery_mode(2)
                    .with_timestamp(1_700_000_000)
                    .with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// A command handler `Orders` that is subscribed, then gone: its queue stays.
    async fn orders_queue(&mut self) {
        let bus = Bus::from_config(&self.config()).await.unwrap();
        bus.subscribe(Subscription::command(
            "Orders",
            |_: Command<PlaceOrder>, _| async { Ok(Value::Null) },
        ))
        .await
        .unwrap();
        bus.shutdown(Duration::from_secs(5)).await.unwrap();
    }

    async fn cleanup(self) {
        if let Some(bus) = &self.bus {
            let _ = bus.shutdown(Duration::from_secs(5)).await;
        }
        let p = &self.prefix;
        let queue = format!("{p}.cmd.{}", PlaceOrder::TOPIC);
        for q in [
            format!("{p}.deadletter.all"),
            format!("{queue}.wait.100ms"),
            queue,
        ] {
            let _ = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Ages (`12s`, `3d ago`, `"age_seconds": 40`) become `[age]`, so snapshots hold
/// still as time passes.
fn redact(text: &str) -> String {
    let text = regex::Regex::new(r#""age_seconds": \d+"#)
        .unwrap()
        .replace_all(text, r#""age_seconds": "[age]""#);
    // An age stands alone, between a space or "(" and a space, ")" or the end: never
    // part of an id, where a uuid group such as `864d` or `1234567d` would otherwise read
    // as days.
    regex::Regex::new(r"(^|[\s(])\d+[smhd]( ago)?([\s)]|$)")
        .unwrap()
        .replace_all(&text, "$1[age]$2$3")
        .into_owned()
}

#[test]
fn redaction_takes_ages_and_leaves_ids_alone() {
    assert_eq!(
        redact("5ff62faa-864d-4a39-a550-19b7deba9b7f  4  12s  down (3d ago) 7m"),
        "5ff62faa-864d-4a39-a550-19b7deba9b7f  4  [age]  down ([age] ago) [age]"
    );
    assert_eq!(
        redact("  1234567d-89ab-4cde-8f01-23456789abcd\n  2h\n"),
        "  1234567d-89ab-4cde-8f01-23456789abcd\n  [age]\n"
    );
    assert_eq!(
        redact(r#"{"id": "cmd-10d", "age_seconds": 40}"#),
        r#"{"id": "cmd-10d", "age_seconds": "[age]"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_show_in_both_formats() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    setup.plant("cmd-1", "Orders").await;
    setup.plant("cmd-2", "Billing").await;
    insta::assert_snapshot!("list_human", setup.ok(&["dlq", "list"]));
    insta::assert_snapshot!("list_json", setup.ok(&["dlq", "list", "--format", "json"]));
    insta::assert_snapshot!(
        "list_one_handler",
        setup.ok(&["dlq", "list", "--handler", "Billing", "--limit", "1"])
    );
    insta::assert_snapshot!("show_human", setup.ok(&["dlq", "show", "cmd-1"]));
    insta::assert_snapshot!(
        "show_json",
        setup.ok(&["dlq", "show", "cmd-2", "--format", "json"])
    );
    assert_eq!(
        setup.ids(),
        ["cmd-1", "cmd-2"],
        "reading takes nothing away"
    );
    setup.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_command_replayed_from_the_cli_succeeds_the_second_time() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let healed = Arc::new(AtomicBool::new(false));
    let (tx, mut runs) = mpsc::unbounded_channel();
    let flag = healed.clone();
    setup
        .bus()
        .subscribe(
            Subscription::command("Flaky", move |_: Command<PlaceOrder>, ctx| {
                let (tx, healed) = (tx.clone(), flag.load(Ordering::SeqCst));
                async move {
                    tx.send((healed, ctx.attempt())).unwrap();
                    if healed {
                        Ok(Value::Null)
                    } else {
                        Err(HandlerError::fail("database down"))
                    }
                }
            })
            .with_max_retries(1),
        )
        .await
        .unwrap();
    let cmd = Command::<PlaceOrder>::from_json(
        json!({"product_id": "sku", "quantity": 1}),
        Metadata::new(),
    )
    .unwrap();
    let id = cmd.id.clone();
    setup
        .bus()
        .dispatch(CommandEnvelope::wrap(cmd))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while setup.ids().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(setup.ids(), std::slice::from_ref(&id));
    for expected in [(false, 1), (false, 2)] {
        assert_eq!(runs.recv().await, Some(expected));
    }

    healed.store(true, Ordering::SeqCst);
    let out = setup.ok(&["dlq", "replay", &id]);
    assert_eq!(
        out,
        format!(
            "replayed 1 dead letter(s) from [prefix].deadletter.all; 0 left in place\n  {id}\n"
        )
    );
    let run = tokio::time::timeout(WAIT, runs.recv()).await.unwrap();
    assert_eq!(run, Some((true, 1)), "attempts start again at 1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(setup.ids().is_empty());
    setup.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_id_exits_1_and_touches_nothing() {
    let Some(mut setup) = Setup::new().await else {
        return;
    };
    setup.orders_queue().await;
    for id in ["cmd-1", "cmd-2", "cmd-3"] {
        setup.plant(id, "Orders").await;
    }
    for verb in ["replay", "purge"] {
        let out = setup.run(&["dlq", verb, "cmd-2", "nope"]);
        assert_eq!(out.status.code(), Some(1), "{verb}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");
        assert_eq!(
            setup.redact(&String::from_utf8_lossy(&out.stderr)),
            "error: no dead letter with id \"nope\" in \"[prefix].deadletter.all\"; nothing was changed\n"
        );
        assert_eq!(
            setup.ids(),
            ["cmd-1", "cmd-2", "cmd-3"],
            "{verb}: nothing touched, order kept"
        );
    }
    let out = setup.run(&["dlq", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    setup.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_replay_all_of_one_handler() {
    let Some(mut setup) = Setup::new().await else {
        return;
    };
    setup.orders_queue().await;
    for (id, handler) in [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B")] {
        setup.plant(id, handler).await;
    }
    insta::assert_snapshot!(
        "purge_all_of_a",
        setup.ok(&["dlq", "purge", "--all", "--handler", "A"])
    );
    assert_eq!(setup.ids(), ["b1", "b2"]);
    insta::assert_snapshot!(
        "replay_all_of_b_json",
        setup.ok(&[
            "dlq",
            "replay",
            "--all",
            "--handler",
            "B",
            "--format",
            "json"
        ])
    );
    assert!(setup.ids().is_empty());
    insta::assert_snapshot!(
        "topology_human",
        setup.ok(&["topology", "--command", PlaceOrder::TOPIC])
    );
    let report: Value = serde_json::from_str(&setup.ok(&[
        "topology",
        "--command",
        PlaceOrder::TOPIC,
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        report["queues"][1]["messages"], 2,
        "the two replays wait in the command queue: {report}"
    );
    setup.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_configuration_errors() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let out = setup.run(&["dlq", "replay"]);
    assert_eq!(out.status.code(), Some(2), "ids or --all are required");
    let out = setup.run(&["dlq", "replay", "x", "--all"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "ids and --all exclude each other"
    );

    let out = Process::new(env!("CARGO_BIN_EXE_orkestra"))
        .args(["dlq", "list"])
        .current_dir(&setup.dir)
        .env("ORKESTRA_BUS_URL", "amqp://guest:hunter2@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(stderr.contains("guest:***@127.0.0.1:1"), "{stderr}");

    let out = Process::new(env!("CARGO_BIN_EXE_orkestra"))
        .args(["dlq", "list"])
        .current_dir(&setup.dir)
        .env("ORKESTRA_BUS_ADAPTER", "in_process")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("works on a RabbitMQ bus"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    setup.cleanup().await;
}

const SCHEMA: &str = r#"
namespace: Shop.Orders
commands:
  PlaceOrder:
    params:
      product_id: { type: string, required: true }
events:
  OrderPlaced:
    fields:
      order_id: { type: string, required: true }
handlers:
  PlaceOrderHandler: { command: PlaceOrder }
  UpdateSearchIndex: { event: OrderPlaced, max_retries: 5, retry_delay: 1s, retry_backoff: 2.0, retry_delay_max: 4s }
  Alarm: { dead_letters: true }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_from_the_schemas_names_every_binding_and_wait_queue() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    std::fs::create_dir_all(setup.dir.join("schemas")).unwrap();
    std::fs::write(setup.dir.join("schemas/orders.yaml"), SCHEMA).unwrap();
    // The event handler runs (its queues exist); the command handler and the alarm
    // never ran here.
    setup
        .bus()
        .subscribe(
            Subscription::events("UpdateSearchIndex", |_: Event<OrderPlaced>, _| async {
                Ok(())
            })
            .with_max_retries(5)
            .with_retry_delay(Duration::from_secs(1))
            .with_retry_backoff(2.0)
            .with_retry_delay_max(Duration::from_secs(4)),
        )
        .await
        .unwrap();
    insta::assert_snapshot!(
        "topology_from_schemas",
        setup.ok(&["topology", "--schemas", "schemas", "--app-prefix", "Shop"])
    );
    let out = setup.run(&["topology", "--schemas", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: --schemas: "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q = format!("{}.evt.UpdateSearchIndex", setup.prefix);
    for wait in ["1000", "2000", "4000"] {
        let _ = setup
            .channel
            .queue_delete(
                format!("{q}.wait.{wait}ms").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
    }
    let _ = setup
        .channel
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await;
    for exchange in ["retry", "retry.first", "back"] {
        let _ = setup
            .channel
            .exchange_delete(
                format!("{q}.{exchange}").as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    setup.cleanup().await;
}

/// Runs `rabbitmqctl`: `None` when it is not installed or failed.
fn rabbitmqctl(args: &[&str]) -> Option<String> {
    Process::new("rabbitmqctl")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_lists_of_a_quorum_dead_letter_queue_keep_every_letter() {
    let Some(setup) = Setup::with_settings("queue_type = \"quorum\"\n").await else {
        return;
    };
    // RabbitMQ 4.x gives quorum queues a delivery limit of 20; on 3.x a policy does
    // the same to this test's dead-letter queue only.
    let policy = format!("{}-delivery-limit", setup.prefix);
    let limited = rabbitmqctl(&[
        "set_policy",
        &policy,
        &format!("^{}\\.deadletter\\.all$", regex::escape(&setup.prefix)),
        r#"{"delivery-limit": 20}"#,
        "--apply-to",
        "queues",
        "--priority",
        "100",
    ])
    .is_some();
    eprintln!("delivery limit 20 by policy: {limited}");
    /// Clears the policy however the test ends.
    struct Cleared(Option<String>);
    impl Drop for Cleared {
        fn drop(&mut self) {
            if let Some(policy) = self.0.take() {
                rabbitmqctl(&["clear_policy", &policy]);
            }
        }
    }
    let _cleared = Cleared(limited.then(|| policy.clone()));
    let planted: Vec<String> = (1..=5).map(|i| format!("cmd-{i}")).collect();
    for id in &planted {
        setup.plant(id, "Orders").await;
    }
    for run in 1..=50 {
        let ids = setup.ids();
        assert_eq!(ids, planted, "dlq list run {run} lost letters");
    }
    let shown = setup.ok(&["dlq", "show", "cmd-3"]);
    assert!(shown.contains("cmd-3"), "{shown}");
    assert_eq!(setup.ids(), planted, "after 50 lists and a show");
    setup.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_on_twenty_thousand_letters_stays_under_100_mb() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    const LETTERS: usize = 20_000;
    let filler = "x".repeat(6 * 1024);
    let prefix = &setup.prefix;
    let mut confirms = Vec::new();
    for i in 0..LETTERS {
        let id = format!("letter-{i}");
        let mut headers = FieldTable::default();
        headers.insert(
            "x-orkestra-handler".into(),
            AMQPValue::LongString("Orders".into()),
        );
        let body = json!({"id": id, "filler": filler});
        confirms.push(
            setup
                .channel
                .basic_publish(
                    format!("{prefix}.deadletter").as_str().into(),
                    PlaceOrder::TOPIC.into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(&body).unwrap(),
                    BasicProperties::default()
                        .with_message_id(id.as_str().into())
                        .with_delivery_mode(2)
                        .with_headers(headers),
                )
                .await
                .unwrap(),
        );
        if confirms.len() == 1000 {
            for c in confirms.drain(..) {
                c.await.unwrap();
            }
        }
    }
    for c in confirms.drain(..) {
        c.await.unwrap();
    }
    let mut child = Process::new(env!("CARGO_BIN_EXE_orkestra"))
        .args(["dlq", "show", "letter-10000", "--format", "json"])
        .current_dir(&setup.dir)
        .env("ORKESTRA_BUS_URL", amqp_url())
        .env_remove("ORKESTRA_BUS_ADAPTER")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The peak resident size, as the kernel keeps it (VmHWM), read until it exits.
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(kb) = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        }) {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "dlq show failed");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown[0]["id"], "letter-10000");
    eprintln!(
        "dlq show over {LETTERS} letters of 6 KiB: peak RSS {} MB in {:.1} s",
        peak_kb / 1024,
        started.elapsed().as_secs_f64()
    );
    assert!(
        peak_kb > 0 && peak_kb < 100 * 1024,
        "dlq show peaked at {} MB",
        peak_kb / 1024
    );

    // A purge this long draws a progress bar on a terminal; into a pipe (a log, CI) it
    // writes no escape code and no carriage return.
    let started = std::time::Instant::now();
    let purged = setup.run(&["dlq", "purge", "--all"]);
    let took = started.elapsed();
    assert_eq!(purged.status.code(), Some(0));
    assert!(
        took > Duration::from_millis(600),
        "the purge took {took:?}: too short for the bar to be due, so this proves nothing"
    );
    let stderr = String::from_utf8_lossy(&purged.stderr);
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "terminal control in a pipe: {stderr:?}"
    );
    assert!(
        String::from_utf8_lossy(&purged.stdout)
            .starts_with(&format!("purged {LETTERS} dead letter(s) from ")),
        "{}",
        String::from_utf8_lossy(&purged.stdout)
    );
    setup.cleanup().await;
}

/// `orkestra relay skip POSITION` moves the relay's checkpoint past the next event only
/// (logged, on the store alone: no broker needed); any other position is refused with
/// the next one named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_skip_moves_past_the_next_event_only() {
    use orkestra_runtime::{EventData, ExpectedVersion, Store};
    let dir = std::env::temp_dir().join(format!(
        "orkestra-cli-relay-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("events.db");
    std::fs::write(
        dir.join("orkestra.toml"),
        format!(
            "[bus]\nadapter = \"rabbitmq\"\n[store]\nadapter = \"sqlite\"\nurl = {:?}\npublish = \"relay\"\n",
            db.display().to_string()
        ),
    )
    .unwrap();
    let store = Store::sqlite(&db).await.unwrap();
    let mut positions = Vec::new();
    for i in 0..3 {
        let event = Event::new(
            OrderPlaced {
                order_id: format!("o{i}"),
                quantity: 1,
            },
            Metadata::new(),
        )
        .unwrap();
        positions.push(
            store
                .append(
                    &format!("order-{i}"),
                    ExpectedVersion::NoStream,
                    vec![EventData::from_event(&event).unwrap()],
                )
                .await
                .unwrap()
                .last_position,
        );
    }
    store
        .save_checkpoint("orkestra.relay", Some(positions[0]))
        .await
        .unwrap();
    let run = |args: &[&str]| {
        Process::new(env!("CARGO_BIN_EXE_orkestra"))
            .args(args)
            .current_dir(&dir)
            .env("ORKESTRA_BUS_URL", amqp_url())
            .env_remove("ORKESTRA_BUS_ADAPTER")
            .env_remove("ORKESTRA_STORE_ADAPTER")
            .env_remove("ORKESTRA_STORE_URL")
            .output()
            .unwrap()
    };
    let out = run(&["relay", "skip", &positions[2].to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the next event to publish is at position {}",
            positions[1]
        )),
        "{stderr}"
    );
    let relay_checkpoint = || async {
        orkestra_runtime::relay::Relay::new(store.clone(), orkestra_runtime::Bus::in_process())
            .checkpoint()
            .await
            .unwrap()
    };
    assert_eq!(relay_checkpoint().await, Some(positions[0]));
    let out = run(&["relay", "skip", &positions[1].to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("skipped deliberately") && stderr.contains("order-1"),
        "logged: {stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&positions[1].to_string()),
        "{out:?}"
    );
    assert_eq!(relay_checkpoint().await, Some(positions[1]));
    assert_eq!(
        store
            .leases()
            .await
            .unwrap()
            .checkpoint("orkestra.relay", 0)
            .await
            .unwrap(),
        Some(positions[1]),
        "moved in the relay's lease, which began at its older checkpoint"
    );

    // While a copy holds the relay, the skip is refused and names it.
    let relay =
        orkestra_runtime::relay::Relay::new(store.clone(), orkestra_runtime::Bus::in_process())
            .with_owner("holder-copy")
            .start()
            .await
            .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !relay.holding() {
        assert!(std::time::Instant::now() < deadline, "the relay never held");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let out = run(&["relay", "skip", &positions[2].to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("held by \"holder-copy\""), "{stderr}");
    relay.stop().await.unwrap();
}

/// A directory of its own with an `orkestra.toml` whose `[store]` is `store` (TOML
/// lines), and `orkestra` run in it with no `ORKESTRA_*` store or bus setting.
struct StoreDir {
    dir: PathBuf,
}

impl StoreDir {
    fn new(store: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "orkestra-cli-status-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("orkestra.toml"), format!("[store]\n{store}\n")).unwrap();
        Self { dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        Process::new(env!("CARGO_BIN_EXE_orkestra"))
            .args(args)
            .current_dir(&self.dir)
            .env_remove("ORKESTRA_BUS_ADAPTER")
            .env_remove("ORKESTRA_STORE_ADAPTER")
            .env_remove("ORKESTRA_STORE_URL")
            .output()
            .unwrap()
    }

    /// Runs `orkestra` and expects exit 0; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What varies from run to run in `status`: a lag other than zero (`[lag]`, the
/// table's column kept as wide), the lease's expiry and the seconds left.
fn redact_status(text: &str) -> String {
    let text = regex::Regex::new(r#""lag_seconds": ([0-9.]+)"#)
        .unwrap()
        .replace_all(text, |c: &regex::Captures<'_>| {
            if &c[1] == "0.0" {
                c[0].to_owned()
            } else {
                r#""lag_seconds": "[lag]""#.to_owned()
            }
        });
    let text = regex::Regex::new(r#""expires_at": "[^"]+""#)
        .unwrap()
        .replace_all(&text, r#""expires_at": "[time]""#);
    let text = regex::Regex::new(r#""expires_in_seconds": \d+"#)
        .unwrap()
        .replace_all(&text, r#""expires_in_seconds": "[seconds]""#);
    // The table: a lag cell with the spaces after it, as wide as it was.
    let text = regex::Regex::new(r"  (\d+\.\d)( +)in ")
        .unwrap()
        .replace_all(&text, |c: &regex::Captures<'_>| {
            let cell = if &c[1] == "0.0" { "0.0" } else { "[lag]" };
            let width = c[1].len() + c[2].len();
            format!("  {cell:<width$}in ")
        });
    let text = regex::Regex::new(r"(?m)  (\d+\.\d)( +)-$")
        .unwrap()
        .replace_all(&text, |c: &regex::Captures<'_>| {
            let cell = if &c[1] == "0.0" { "0.0" } else { "[lag]" };
            let width = c[1].len() + c[2].len();
            format!("  {cell:<width$}-")
        });
    regex::Regex::new(r"in \d+s")
        .unwrap()
        .replace_all(&text, "in [N]s")
        .into_owned()
}

#[test]
fn status_redaction_keeps_zero_lags_and_the_columns() {
    assert_eq!(
        redact_status("x  0.0          in 30s\ny  12.5         in 9s\nz  0.1          -\n"),
        "x  0.0          in [N]s\ny  [lag]        in [N]s\nz  [lag]        -\n"
    );
    assert_eq!(
        redact_status(r#""lag_seconds": 0.0, "lag_seconds": 0.051, "expires_in_seconds": 30"#),
        r#""lag_seconds": 0.0, "lag_seconds": "[lag]", "expires_in_seconds": "[seconds]""#
    );
}

/// `orkestra status` on a SQLite store the test prepared: two workers, partitions held
/// by two owners, one free, one released, one never run; checkpoints at, before and far
/// before the head. Table and JSON; the store alone (no broker, any bus).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_every_worker_and_partition() {
    use orkestra_runtime::{EventData, ExpectedVersion, Store};
    let dir = StoreDir::new("adapter = \"sqlite\"\nurl = \"events.db\"");
    let store = Store::sqlite(dir.dir.join("events.db")).await.unwrap();
    let empty = dir.ok(&["status"]);
    assert_eq!(
        empty,
        "no workers have run yet: the store holds no leases\n"
    );
    assert_eq!(dir.ok(&["status", "--format", "json"]), "[]\n");

    let mut p = Vec::new();
    for i in 0..4 {
        let event = Event::new(
            OrderPlaced {
                order_id: format!("o{i}"),
                quantity: 1,
            },
            Metadata::new(),
        )
        .unwrap();
        p.push(
            store
                .append(
                    &format!("order-{i}"),
                    ExpectedVersion::NoStream,
                    vec![EventData::from_event(&event).unwrap()],
                )
                .await
                .unwrap()
                .last_position,
        );
    }
    let leases = store.leases().await.unwrap();
    let live = Duration::from_secs(30);
    leases.register("Tally", 3).await.unwrap();
    leases.register("orkestra.relay", 1).await.unwrap();
    let lease = leases
        .acquire("Tally", 0, "web-1:41", live)
        .await
        .unwrap()
        .unwrap();
    leases.save_checkpoint(&lease, Some(p[3])).await.unwrap();
    let lease = leases
        .acquire("Tally", 1, "web-2:7", live)
        .await
        .unwrap()
        .unwrap();
    leases.save_checkpoint(&lease, Some(p[1])).await.unwrap();
    assert!(leases.release(&lease).await.unwrap());
    let lease = leases
        .acquire("orkestra.relay", 0, "web-2:7", live)
        .await
        .unwrap()
        .unwrap();
    leases.save_checkpoint(&lease, Some(p[0])).await.unwrap();
    // Every unhandled event at least this old.
    tokio::time::sleep(Duration::from_millis(150)).await;

    let table = dir.ok(&["status"]);
    insta::assert_snapshot!("status_table", redact_status(&table));
    assert_eq!(dir.ok(&["status", "--format", "table"]).lines().count(), 5);
    let json = dir.ok(&["status", "--format", "json"]);
    insta::assert_snapshot!("status_json", redact_status(&json));

    let rows: Value = serde_json::from_str(&json).unwrap();
    let rows = rows.as_array().unwrap();
    for row in rows {
        let lag = row["lag_seconds"].as_f64().unwrap();
        if row["lag_events"] == 0 {
            assert_eq!(lag, 0.0, "{row}");
        } else {
            assert!((0.15..60.0).contains(&lag), "{row}");
        }
        match row["owner"].as_str() {
            Some(_) => {
                let left = row["expires_in_seconds"].as_u64().unwrap();
                assert!((25..=30).contains(&left), "{row}");
                let at = chrono::DateTime::parse_from_rfc3339(row["expires_at"].as_str().unwrap());
                assert!(at.is_ok(), "RFC 3339: {row}");
            }
            None => assert!(row["expires_at"].is_null() && row["expires_in_seconds"].is_null()),
        }
    }
}

/// A store `status` cannot read is one line naming it, the password hidden; a SQLite
/// file that does not exist is reported, not created; a memory store is refused.
#[test]
fn status_names_the_store_it_cannot_read() {
    let dir =
        StoreDir::new("adapter = \"postgres\"\nurl = \"postgres://app:hunter2@127.0.0.1:1/app\"");
    let out = dir.run(&["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot open the configured store: ")
            && stderr.contains("(store.url)")
            && stderr.contains("app:***@127.0.0.1:1/app"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let dir = StoreDir::new("adapter = \"sqlite\"\nurl = \"missing.db\"");
    let out = dir.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: store sqlite \"missing.db\": no such file (store.url, or ORKESTRA_STORE_URL, names the service's SQLite file)\n"
    );
    assert!(!dir.dir.join("missing.db").exists(), "not created");

    let dir = StoreDir::new("adapter = \"memory\"");
    let out = dir.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("store.adapter is \"memory\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `projection rebuild`: a held projection's partitions are reset in the store (its
/// holder fenced), with the new count, and the head is the replay's target.
#[tokio::test]
async fn projection_rebuild_resets_every_partition_with_the_new_count() {
    use orkestra_runtime::projection::Projections;
    use orkestra_runtime::{EventData, ExpectedVersion, Store, StoreError};
    let dir = StoreDir::new("adapter = \"sqlite\"\nurl = \"events.db\"");
    let store = Store::sqlite(dir.dir.join("events.db")).await.unwrap();
    let event = Event::new(
        OrderPlaced {
            order_id: "o1".into(),
            quantity: 1,
        },
        Metadata::new(),
    )
    .unwrap();
    let head = store
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![EventData::from_event(&event).unwrap()],
        )
        .await
        .unwrap()
        .last_position;
    let leases = store.leases().await.unwrap();
    leases.register("Tally", 2).await.unwrap();
    let held = leases
        .acquire("Tally", 0, "web-1:41", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    leases.save_checkpoint(&held, Some(head)).await.unwrap();

    let out = dir.ok(&["projection", "rebuild", "Tally", "--partitions", "4"]);
    assert_eq!(
        out,
        format!(
            "projection \"Tally\": 4 partition(s), every checkpoint cleared; the copies running it, or the next to start it, replay every event up to position {head}\n"
        )
    );
    let records: Vec<_> = leases
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.worker == "Tally")
        .collect();
    assert_eq!(records.len(), 4);
    assert!(
        records
            .iter()
            .all(|r| r.partitions == Some(4) && r.owner.is_none() && r.checkpoint.is_none())
    );
    assert_eq!(
        Projections::checkpoint(&store, "Tally").await.unwrap(),
        None
    );
    // The copy that held partition 0 is fenced.
    assert!(matches!(
        leases.save_checkpoint(&held, Some(head)).await,
        Err(StoreError::Fenced { .. })
    ));
    // A count out of range is refused, naming it.
    let out = dir.run(&["projection", "rebuild", "Tally", "--partitions", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 partitions is out of range (1 to 1024)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `store tags` and `store reindex-tags` on a SQLite store the test prepared: events of a
/// type stored before its tag was declared (one without the field, one whose field is a
/// number), a decision refused until the reindex, the reindex's summary (a pipe: no
/// escape codes), the decision's check passing after it, and a second run with nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_tags_indexes_old_events_and_reports_the_ones_it_cannot() {
    use orkestra_runtime::{EventData, ExpectedVersion, Store, StoreError};
    let dir = StoreDir::new("adapter = \"sqlite\"\nurl = \"events.db\"");
    let store = Store::sqlite(dir.dir.join("events.db")).await.unwrap();
    assert_eq!(
        dir.ok(&["store", "tags"]),
        "no tags are declared: no decision has run against this store\n"
    );
    assert_eq!(dir.ok(&["store", "tags", "--format", "json"]), "[]\n");
    let registered = |data: Value| EventData {
        id: orkestra_runtime::new_id(),
        event_type: "Accounts.UserRegistered".into(),
        schema_version: 1,
        data,
        metadata: Metadata::new(),
        topic: None,
        tags: Vec::new(),
    };
    for (i, data) in [
        json!({"username": "ada"}),
        json!({"username": "bob"}),
        json!({"username": 7}),
        json!({"email": "x@example.org"}),
    ]
    .into_iter()
    .enumerate()
    {
        store
            .append(
                &format!("user-{i}"),
                ExpectedVersion::NoStream,
                vec![registered(data)],
            )
            .await
            .unwrap();
    }
    let err = store
        .ensure_tags_indexed(&[
            ("Accounts.UserRegistered", "username"),
            ("Accounts.UsernameReleased", "username"),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::TagsNotIndexed { event_type, tag }
            if event_type == "Accounts.UserRegistered" && tag == "username"),
        "{err:?}"
    );
    insta::assert_snapshot!("store_tags_pending", dir.ok(&["store", "tags"]));

    let out = dir.run(&["store", "reindex-tags"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\r'),
        "{stderr:?}"
    );
    insta::assert_snapshot!("store_reindex_tags", String::from_utf8(out.stdout).unwrap());
    store
        .ensure_tags_indexed(&[("Accounts.UserRegistered", "username")])
        .await
        .unwrap();
    let ada = orkestra_runtime::Query::of(orkestra_runtime::QueryItem::tags([
        orkestra_runtime::Tag::new("username", "ada").unwrap(),
    ]));
    let found = store.read_query(&ada, 0, 10).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].stream(), "user-0");
    insta::assert_snapshot!(
        "store_tags_indexed_json",
        dir.ok(&["store", "tags", "--format", "json"])
    );

    let again: Value =
        serde_json::from_str(&dir.ok(&["store", "reindex-tags", "--format", "json"])).unwrap();
    assert_eq!(
        again,
        json!({"pairs": [], "events": 0, "written": 0, "skipped_count": 0, "skipped": []})
    );
    assert_eq!(
        dir.ok(&["store", "reindex-tags"]),
        "every declared tag is indexed: nothing to do\n"
    );
    // A store it cannot open: exit 1, one line naming it.
    let missing = StoreDir::new("adapter = \"sqlite\"\nurl = \"missing.db\"");
    let out = missing.run(&["store", "reindex-tags"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("error: store sqlite \"missing.db\": no such file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Completions and man pages come from the same clap definitions as the parser, and need
/// neither a broker nor a configuration.
#[test]
fn completions_and_man_pages_need_no_configuration() {
    let run = |args: &[&str]| {
        Process::new(env!("CARGO_BIN_EXE_orkestra"))
            .args(args)
            .current_dir(std::env::temp_dir())
            .env("ORKESTRA_BUS_ADAPTER", "rabbitmq")
            .env("ORKESTRA_BUS_URL", "amqp://nobody:secret@127.0.0.1:1/%2f")
            .output()
            .unwrap()
    };
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["dlq", "replay", "topology", "status", "relay", "format"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let out = run(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH orkestra 1"), "{page}");
    assert!(page.contains("dlq") && page.contains("topology"), "{page}");
    let dir = std::env::temp_dir().join(format!("orkestra-man-{}", std::process::id()));
    let out = run(&["man", "--out", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    for page in [
        "orkestra.1",
        "orkestra-dlq.1",
        "orkestra-dlq-replay.1",
        "orkestra-status.1",
    ] {
        assert!(dir.join(page).is_file(), "no {page}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
