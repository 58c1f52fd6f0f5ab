//! `orkestra forget SUBJECT --yes` as an operator runs it, on a SQLite store the test
//! prepares (no broker): refused without `--yes`, then the subject's personal fields
//! read as their replacements in a fresh handle, with the erasure event and a summary.

use std::path::PathBuf;
use std::process::{Command as Process, Output};

use orkestra_runtime::keys::{PersonalData, PersonalEvent, PersonalField};
use orkestra_runtime::store::{FORGOTTEN_STREAM, SUBJECT_FORGOTTEN};
use orkestra_runtime::{EventData, ExpectedVersion, Metadata, RawEvent, Store};
use serde_json::{Value, json};

static EVENTS: &[PersonalEvent] = &[PersonalEvent::new(
    "Test.Customers.CustomerRegistered",
    "customer_id",
    &[PersonalField::new("email", "\"(erased)\"")],
)];

/// A directory with an `orkestra.toml` naming a SQLite store in it.
struct StoreDir {
    dir: PathBuf,
}

impl StoreDir {
    fn new(store: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "orkestra-cli-forget-{}",
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

    async fn store(&self) -> Store {
        Store::sqlite(self.dir.join("events.db"))
            .await
            .unwrap()
            .with_personal_data(&PersonalData::new().with_events(EVENTS))
            .unwrap()
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn registered(subject: &str, email: &str) -> EventData {
    EventData::from_raw(RawEvent {
        id: orkestra_runtime::new_id(),
        event_type: "Test.Customers.CustomerRegistered".into(),
        version: 1,
        topic: "test.customers".into(),
        data: json!({"customer_id": subject, "email": email}),
        metadata: Metadata::new(),
    })
}

async fn email_of(dir: &StoreDir, subject: &str) -> (Value, Vec<String>) {
    let events = dir
        .store()
        .await
        .read_stream(&format!("customer-{subject}"), 0, 1)
        .await
        .unwrap();
    (
        events[0].data().unwrap()["email"].clone(),
        events[0].redacted().to_vec(),
    )
}

#[tokio::test]
async fn forget_asks_for_yes_then_forgets_and_says_what_it_did() {
    let dir = StoreDir::new("adapter = \"sqlite\"\nurl = \"events.db\"");
    let store = dir.store().await;
    for (subject, email) in [("c-1", "ada@mail.example"), ("c-2", "bob@mail.example")] {
        store
            .append(
                &format!("customer-{subject}"),
                ExpectedVersion::NoStream,
                vec![registered(subject, email)],
            )
            .await
            .unwrap();
    }
    drop(store);

    let out = dir.run(&["forget", "c-1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"c-1\"")
            && stderr.contains("--yes")
            && stderr.contains("Nothing was done"),
        "{stderr}"
    );
    assert_eq!(
        email_of(&dir, "c-1").await.0,
        "ada@mail.example",
        "untouched"
    );

    let out = dir.run(&["forget", "c-1", "--yes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("subject \"c-1\" forgotten in the sqlite store: its key is deleted")
            && stdout.contains(&format!("of stream \"{FORGOTTEN_STREAM}\""))
            && stdout.contains("Copies outside the store"),
        "{stdout}"
    );
    assert_eq!(
        email_of(&dir, "c-1").await,
        (json!("(erased)"), vec!["email".to_owned()])
    );
    assert_eq!(email_of(&dir, "c-2").await.0, "bob@mail.example");
    let store = dir.store().await;
    let record = store.read_stream(FORGOTTEN_STREAM, 0, 10).await.unwrap();
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].event_type(), SUBJECT_FORGOTTEN);
    assert_eq!(record[0].data().unwrap(), json!({"subject": "c-1"}));
    assert!(store.is_forgotten("c-1").await.unwrap());

    // Again, as JSON: nothing left to delete, the same erasure event.
    let out = dir.run(&["forget", "c-1", "--yes", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary,
        json!({
            "subject": "c-1",
            "key_deleted": false,
            "stream": FORGOTTEN_STREAM,
            "position": record[0].position(),
            "store": "sqlite",
        })
    );
}

#[test]
fn forget_on_a_store_with_nothing_to_forget_fails_with_the_reason() {
    let dir = StoreDir::new("adapter = \"memory\"");
    let out = dir.run(&["forget", "c-1", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("store.adapter is \"memory\""), "{stderr}");

    let dir = StoreDir::new("adapter = \"sqlite\"\nurl = \"missing.db\"");
    let out = dir.run(&["forget", "c-1", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no such file"), "{stderr}");
    assert!(!dir.dir.join("missing.db").exists());

    let out = dir.run(&["forget", "", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the subject is empty"));
}
