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

/// `amqp://guest:guest@127.0.0.1:5672/%2f`, or `ORKESTRA_AMQP_URL`.
pub fn amqp_url() -> SecretUrl {
    SecretUrl::new(
        std::env::var("ORKESTRA_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
    )
}

/// A RabbitMQ bus configuration with its own topology (a unique prefix, queues that
/// expire after the test) and short retry delays.
pub fn rabbit_config() -> orkestra_runtime::Config {
    let mut config = orkestra_runtime::Config::default();
    config.bus.adapter = orkestra_runtime::config::BusAdapter::RabbitMq;
    config.bus.url = Some(amqp_url());
    config.bus.prefix = format!("orkestra-test-{}", uuid::Uuid::new_v4().simple());
    config.bus.queue_expiry_ms = Some(120_000);
    config.bus.retry_delay_ms = 100;
    config
}

pub async fn rabbit_bus_with(config: &orkestra_runtime::Config) -> Option<orkestra_runtime::Bus> {
    match orkestra_runtime::Bus::from_config(config).await {
        Ok(bus) => Some(bus),
        Err(e) => {
            unavailable("RabbitMQ", &e);
            None
        }
    }
}

pub async fn rabbit_bus() -> Option<orkestra_runtime::Bus> {
    rabbit_bus_with(&rabbit_config()).await
}

/// Runs `rabbitmqctl` against the local broker: its output, or `None` when it failed or
/// is not installed.
pub fn rabbitmqctl(args: &[&str]) -> Option<String> {
    std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}
