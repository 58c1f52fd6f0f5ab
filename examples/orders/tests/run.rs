//! The example as a user runs it: the binary on the embedded defaults (in-process bus,
//! SQLite in a directory of its own, twice, as a store kept from an earlier run), on the
//! memory store, and on RabbitMQ with PostgreSQL when they are reachable (the
//! skip-or-require switch of the runtime's tests). Each run must finish and show the
//! decision's outcome: one registration accepted, the same username refused to the
//! second customer, and the stored event with both tags.

#[path = "../../../orkestra-runtime/tests/support/services.rs"]
#[allow(dead_code)]
mod services;

#[path = "../../../orkestra-runtime/tests/support/databases.rs"]
#[allow(dead_code)]
mod databases;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh working directory (the SQLite default is `./orkestra.db`).
fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "orkestra-example-{name}-{}",
        orkestra_runtime::new_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the example with `env` in `dir`; its standard output.
fn run(dir: &Path, env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orders"));
    command.current_dir(dir).env_remove("RUST_LOG");
    // Only what the test sets: never an adapter from the caller's environment.
    for (key, _) in std::env::vars() {
        if key.starts_with("ORKESTRA_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the example failed ({env:?}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value after `prefix` on the line that starts with it, up to the next space.
fn word_after<'a>(line: &'a str, prefix: &str) -> &'a str {
    line[line.find(prefix).unwrap() + prefix.len()..]
        .split([' ', ','])
        .next()
        .unwrap()
}

/// The decision's lines: the first customer gets the username, the second is refused
/// for it, and the store holds one event with both tags.
fn assert_decision(stdout: &str, adapters: &str) {
    assert!(stdout.contains(adapters), "{stdout}");
    let lines: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("customers (a decision across streams):"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    let accepted = lines[0];
    assert!(
        accepted.starts_with("  registration accepted: cust_"),
        "{accepted}"
    );
    let first = word_after(accepted, "accepted: ");
    let username = word_after(accepted, " as ");
    assert!(
        accepted.contains(&format!("\"stream\":\"customer-{first}\"")),
        "the reply names the stream: {accepted}"
    );
    let refused = lines[1];
    let second = word_after(refused, "refused: ");
    assert_ne!(first, second);
    assert!(
        refused.ends_with(&format!(
            "as {username}: username {username} is taken by customer {first}"
        )),
        "{refused}"
    );
    assert_eq!(
        lines[2],
        format!(
            "  stored Shop.Customers.CustomerRegistered in customer-{first} with tags customer_id:{first}, username:{username}"
        )
    );
    // Personal data: plain for readers, then the replacements once forgotten.
    assert_eq!(
        lines[3],
        format!("  read back: {first} <{first}@example.com> named \"Ada Lovelace\", redacted []")
    );
    assert!(
        lines[4].starts_with(&format!("  forgot {first} (key deleted: true, ")),
        "{}",
        lines[4]
    );
    assert_eq!(
        lines[5],
        format!("  after forget: {first} <> named \"(erased)\", redacted [\"email\", \"name\"]")
    );
}

/// The customers of the run (the accepted one, then the refused one).
fn customers_of(stdout: &str) -> [String; 2] {
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| word_after(l, prefix.trim_start_matches("  registration ")).to_owned())
            .unwrap_or_else(|| panic!("no line {prefix:?}:\n{stdout}"))
    };
    [
        line("  registration accepted: "),
        line("  registration refused: "),
    ]
}

/// Whether any file of the SQLite store in `dir` (the database, its WAL) holds `needle`.
fn sqlite_files_hold(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        name.starts_with("orkestra.db")
            && std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
    })
}

#[test]
fn the_example_runs_on_the_embedded_defaults_twice() {
    let dir = workdir("sqlite");
    let first = run(&dir, &[]);
    assert_decision(&first, "bus: in_process, store: sqlite");
    // The same store again: the earlier run's registrations stay, and do not refuse
    // this run's (its username is new).
    let second = run(&dir, &[]);
    assert_decision(&second, "bus: in_process, store: sqlite");
    // The customers' emails were never stored in plain text (the accepted one's event is
    // encrypted, then its key deleted; the refused one's command was never stored), and
    // the name of all of them neither: not in the database, not in its WAL.
    for stdout in [&first, &second] {
        let [accepted, refused] = customers_of(stdout);
        for needle in [
            format!("{accepted}@example.com"),
            format!("{refused}@example.com"),
        ] {
            assert!(
                !sqlite_files_hold(&dir, &needle),
                "{needle} in the SQLite files"
            );
        }
        assert!(
            sqlite_files_hold(&dir, &accepted),
            "the sanity check finds the subject"
        );
    }
    assert!(!sqlite_files_hold(&dir, "Ada Lovelace"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_example_runs_on_the_memory_store() {
    let dir = workdir("memory");
    let out = run(&dir, &[("ORKESTRA_STORE_ADAPTER", "memory")]);
    assert_decision(&out, "bus: in_process, store: memory");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn the_example_runs_on_rabbitmq_and_postgres() {
    if services::postgres_store().await.is_none() || services::rabbit_bus().await.is_none() {
        return;
    }
    // A database of its own: the example's projection `Balances` (one partition) shares
    // its name with the test crate's golden one (four), and a projection's partition
    // count is stored with its checkpoint.
    let database = databases::FreshDatabase::create("example").await.unwrap();
    let (amqp, pg) = (services::amqp_url(), database.url());
    let dir = workdir("services");
    let out = run(
        &dir,
        &[
            ("ORKESTRA_BUS_ADAPTER", "rabbitmq"),
            ("ORKESTRA_BUS_URL", amqp.expose()),
            ("ORKESTRA_STORE_ADAPTER", "postgres"),
            ("ORKESTRA_STORE_URL", pg.expose()),
        ],
    );
    assert_decision(&out, "bus: rabbitmq, store: postgres");
    std::fs::remove_dir_all(dir).ok();
}
