//! Real services for the tests: used when reachable; when not, a test skips with a
//! message, unless `ORKESTRA_REQUIRE_SERVICES=1` (as CI sets), where it fails.

use orkestra_runtime::{SecretUrl, Store};

/// `postgres://postgres@127.0.0.1:5432/test`, or `ORKESTRA_PG_URL`.
pub fn postgres_url() -> SecretUrl {
    SecretUrl::new(
        std::env::var("ORKESTRA_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    )
}

pub fn required() -> bool {
    std::env::var("ORKESTRA_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Reports a missing service: a panic when services are required, else a skip notice.
pub fn unavailable(service: &str, detail: &dyn std::fmt::Display) {
    if required() {
        panic!("{service} is required (ORKESTRA_REQUIRE_SERVICES=1) but unavailable: {detail}");
    }
    eprintln!(
        "SKIPPED: {service} is unavailable ({detail}); set ORKESTRA_REQUIRE_SERVICES=1 to fail instead"
    );
}

pub async fn postgres_store() -> Option<Store> {
    let url = postgres_url();
    match Store::postgres(&url).await {
        Ok(store) => Some(store),
        Err(e) => {
            unavailable("PostgreSQL", &e);
            None
        }
    }
}
