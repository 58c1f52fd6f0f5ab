//! `orkestra store encrypt-personal --schemas DIR` as an operator runs it, on a SQLite
//! store the test prepares (no broker): events appended before the schema made their
//! fields personal, refused without `--yes`, then sealed in place (a forgotten
//! subject's erased, an event without a subject reported), with its summary; a second
//! run with nothing to do, and bad schemas refused.

use std::path::PathBuf;
use std::process::{Command as Process, Output};

use orkestra_runtime::keys::{ENCRYPTED_KEY, PersonalData, PersonalEvent, PersonalField};
use orkestra_runtime::{EventData, ExpectedVersion, Metadata, RawEvent, Store};
use serde_json::{Value, json};

const REGISTERED: &str = "Test.Customers.CustomerRegistered";

/// What the schema below generates: the description the store needs to read.
static EVENTS: &[PersonalEvent] = &[PersonalEvent::new(
    REGISTERED,
    "customer_id",
    &[
        PersonalField::new("email", "\"\""),
        PersonalField::new("name", "\"(erased)\""),
    ],
)];

const SCHEMA: &str = "\
namespace: Test.Customers
events:
  CustomerRegistered:
    personal_data: { subject: customer_id }
    fields:
      customer_id: { type: string, required: true }
      email: { type: string, required: true, personal: true }
      name: { type: string, personal: true, replacement: \"(erased)\" }
      plan: { type: string, required: true }
";

const PLAIN_SCHEMA: &str = "\
namespace: Test.Customers
events:
  CustomerRegistered:
    fields:
      customer_id: { type: string, required: true }
      email: { type: string, required: true }
";

/// A directory with an `orkestra.toml` naming a SQLite store in it, and the schemas.
struct StoreDir {
    dir: PathBuf,
}

impl StoreDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "orkestra-cli-encrypt-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("schemas")).unwrap();
        std::fs::create_dir_all(dir.join("plain")).unwrap();
        std::fs::write(
            dir.join("orkestra.toml"),
            "[store]\nadapter = \"sqlite\"\nurl = \"events.db\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("schemas/customers.yaml"), SCHEMA).unwrap();
        std::fs::write(dir.join("plain/customers.yaml"), PLAIN_SCHEMA).unwrap();
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

    /// The store as a process of the older schema writes it (nothing personal).
    async fn plain(&self) -> Store {
        Store::sqlite(self.dir.join("events.db")).await.unwrap()
    }

    /// The store as the generated code of the new schema reads it.
    async fn personal(&self) -> Store {
        self.plain()
            .await
            .with_personal_data(&PersonalData::new().with_events(EVENTS))
            .unwrap()
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn registered(data: Value) -> EventData {
    EventData::from_raw(RawEvent {
        id: orkestra_runtime::new_id(),
        event_type: REGISTERED.into(),
        version: 1,
        topic: "test.customers".into(),
        data,
        metadata: Metadata::new(),
    })
}

fn customer(subject: &str, email: &str) -> Value {
    json!({"customer_id": subject, "email": email, "name": format!("{subject} Lovelace"), "plan": "gold"})
}

/// Every stored event's data as the table holds it.
async fn stored(dir: &StoreDir) -> Vec<String> {
    let events = dir.plain().await.read_all(0, 100).await.unwrap();
    events.iter().map(|e| e.data_json().to_owned()).collect()
}

#[tokio::test]
async fn encrypt_personal_asks_for_yes_then_seals_stored_events_and_says_what_it_did() {
    let dir = StoreDir::new();
    let plain = dir.plain().await;
    for (subject, email) in [
        ("c-1", "ada@mail.example"),
        ("c-2", "bob@mail.example"),
        ("c-3", "carol@mail.example"),
    ] {
        plain
            .append(
                &format!("customer-{subject}"),
                ExpectedVersion::NoStream,
                vec![registered(customer(subject, email))],
            )
            .await
            .unwrap();
    }
    plain
        .append(
            "customer-none",
            ExpectedVersion::NoStream,
            vec![registered(json!({"email": "nobody@mail.example"}))],
        )
        .await
        .unwrap();
    drop(plain);
    // Carol asked to be forgotten before her events were sealed.
    dir.personal().await.forget("c-3").await.unwrap();
    let plaintexts = [
        "ada@mail.example",
        "bob@mail.example",
        "carol@mail.example",
        "c-1 Lovelace",
        "c-3 Lovelace",
    ];

    // Without --yes, off a terminal: says what it would do, does nothing.
    let out = dir.run(&["store", "encrypt-personal", "--schemas", "schemas"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{REGISTERED} (subject customer_id): email, name"))
            && stderr.contains("the one operation that changes stored events")
            && stderr.contains("Nothing was done; run again with --yes"),
        "{stderr}"
    );
    assert!(stored(&dir).await.concat().contains("ada@mail.example"));

    let out = dir.run(&["store", "encrypt-personal", "--schemas", "schemas", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\r'),
        "no progress bar in a pipe: {stderr:?}"
    );
    insta::assert_snapshot!(
        "store_encrypt_personal",
        String::from_utf8(out.stdout).unwrap()
    );
    let rows = stored(&dir).await;
    for plain in plaintexts {
        assert!(!rows.concat().contains(plain), "{plain} in {rows:#?}");
    }
    assert!(rows[0].contains(ENCRYPTED_KEY) && rows[0].contains("gold"));
    assert!(
        rows.concat().contains("nobody@mail.example"),
        "reported, left"
    );
    // Readers of the new schema get the values back, and carol's replacements.
    let store = dir.personal().await;
    let read = store.read_all(0, 100).await.unwrap();
    assert_eq!(read[0].data().unwrap(), customer("c-1", "ada@mail.example"));
    assert_eq!(read[1].data().unwrap(), customer("c-2", "bob@mail.example"));
    let carol = read[2].data().unwrap();
    assert_eq!(
        (&carol["email"], &carol["name"], &carol["plan"]),
        (&json!(""), &json!("(erased)"), &json!("gold"))
    );
    assert_eq!(read[2].redacted().len(), 2);

    // Again: nothing after where it stopped; from the start, nothing to seal.
    let out = dir.run(&["store", "encrypt-personal", "--schemas", "schemas", "--yes"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("no event after position ") && stdout.contains("nothing to do"),
        "{stdout}"
    );
    let out = dir.run(&[
        "store",
        "encrypt-personal",
        "--schemas",
        "schemas",
        "--yes",
        "--from-start",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["store"], "sqlite");
    assert_eq!(summary["scanned"], 5, "{summary}");
    assert_eq!(
        (
            &summary["rewritten"],
            &summary["fields_sealed"],
            &summary["unsealed_count"]
        ),
        (&json!(0), &json!(0), &json!(1)),
        "{summary}"
    );
    assert_eq!(summary["unsealed"][0]["stream"], "customer-none");
    assert_eq!(stored(&dir).await, rows, "not a byte changed");
}

#[test]
fn encrypt_personal_refuses_schemas_without_personal_data_and_bad_stores() {
    let dir = StoreDir::new();
    let out = dir.run(&["store", "encrypt-personal", "--schemas", "plain", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("declares personal data") && stderr.contains("nothing to encrypt"),
        "{stderr}"
    );
    std::fs::write(dir.dir.join("plain/broken.yaml"), "namespace: [\n").unwrap();
    let out = dir.run(&["store", "encrypt-personal", "--schemas", "plain", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--schemas"));
    // The store must exist: a mistyped path is not created empty.
    let out = dir.run(&[
        "--config",
        "missing.toml",
        "store",
        "encrypt-personal",
        "--schemas",
        "schemas",
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(1));
    std::fs::write(
        dir.dir.join("orkestra.toml"),
        "[store]\nadapter = \"sqlite\"\nurl = \"missing.db\"\n",
    )
    .unwrap();
    let out = dir.run(&["store", "encrypt-personal", "--schemas", "schemas", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.dir.join("missing.db").exists());
}
