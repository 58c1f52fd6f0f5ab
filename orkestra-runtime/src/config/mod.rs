//! Configuration: which bus and which store, from `orkestra.toml` and `ORKESTRA_*`
//! environment variables.
//!
//! ```toml
//! [bus]
//! adapter = "rabbitmq"          # "in_process" (default) | "rabbitmq"
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"
//! inbox = "store"               # "memory" (default) | "store": once-handlers' record in the store
//! keys = "store"                # "none" (default) | "store": personal data sealed with the store's keys
//! [store]
//! adapter = "postgres"          # "sqlite" (default) | "memory" | "postgres" | "eventstoredb"
//! url = "postgres://postgres@127.0.0.1:5432/test"
//! publish = "relay"             # "direct" (default) | "relay": appends only, the relay publishes
//! pool_size = 16                # PostgreSQL connections; projection batches hold at most 3/4
//! pool_timeout_ms = 30000       # how long a call waits for a free connection
//! ```
//!
//! Every error names the setting (`bus.adapter`) and where its value came from (a file
//! line and column, or an environment variable). URLs are held as [`SecretUrl`], whose
//! `Debug` and `Display` hide the password.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

mod secret;

pub use secret::SecretUrl;
pub(crate) use secret::redact;

/// The file [`Config::load`] reads when it exists.
pub const DEFAULT_FILE: &str = "orkestra.toml";
/// The embedded store's file when no `store.url` is given.
pub const DEFAULT_SQLITE_PATH: &str = "./orkestra.db";

/// Which bus to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BusAdapter {
    /// Handlers in this process (the default).
    #[default]
    InProcess,
    /// RabbitMQ.
    RabbitMq,
}

impl BusAdapter {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("in_process", Self::InProcess),
        ("rabbitmq", Self::RabbitMq),
    ];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        name_of(Self::NAMES, self)
    }
}

/// The type of every queue the RabbitMQ bus declares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    /// Classic queues (the default).
    #[default]
    Classic,
    /// Quorum queues: replicated across a cluster, durable, dead-lettering at least once.
    Quorum,
}

impl QueueType {
    const NAMES: &'static [(&'static str, Self)] =
        &[("classic", Self::Classic), ("quorum", Self::Quorum)];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        name_of(Self::NAMES, self)
    }
}

/// Which event store to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreAdapter {
    /// The embedded single-file store (the default).
    #[default]
    Sqlite,
    /// In memory, gone with the process.
    Memory,
    /// PostgreSQL.
    Postgres,
    /// EventStoreDB / KurrentDB.
    EventStoreDb,
}

impl StoreAdapter {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("sqlite", Self::Sqlite),
        ("memory", Self::Memory),
        ("postgres", Self::Postgres),
        ("eventstoredb", Self::EventStoreDb),
    ];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        name_of(Self::NAMES, self)
    }
}

/// Who publishes stored events (`store.publish`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishMode {
    /// `Store::append_and_publish` and the aggregate handlers publish right after the
    /// append: an event is lost to subscribers if the process dies in between.
    #[default]
    Direct,
    /// They only append; a `Relay` publishes every stored event from the store's global
    /// order (the transactional outbox: nothing stored is left unpublished).
    Relay,
}

impl PublishMode {
    const NAMES: &'static [(&'static str, Self)] =
        &[("direct", Self::Direct), ("relay", Self::Relay)];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        name_of(Self::NAMES, self)
    }
}

/// Where `once: true` handlers record the messages they handled (`bus.inbox`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum InboxMode {
    /// A bounded set in memory: lost at a restart, not shared between processes.
    #[default]
    Memory,
    /// The event store's `orkestra_inbox` (SQLite, PostgreSQL): the bus takes it from the
    /// store given to `Bus::with_store`, and refuses to subscribe a `once: true` handler
    /// until one is given.
    Store,
}

impl InboxMode {
    const NAMES: &'static [(&'static str, Self)] =
        &[("memory", Self::Memory), ("store", Self::Store)];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        name_of(Self::NAMES, self)
    }
}

/// Where the bus gets the keys of personal data (`bus.keys`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeysMode {
    /// No keys unless `Bus::with_keys` gives them: a RabbitMQ bus then refuses to
    /// subscribe handlers of events with personal fields.
    #[default]
    None,
    /// The keys and personal data of the store given to `Bus::with_store`: the RabbitMQ
    /// bus seals personal fields on publish and opens them on consume. Handlers of
    /// personal events are refused until the store is given.
    Store,
}

impl KeysMode {
    const NAMES: &'static [(&'static str, Self)] = &[("none", Self::None), ("store", Self::Store)];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        name_of(Self::NAMES, self)
    }
}

fn name_of<T: PartialEq + Copy>(names: &[(&'static str, T)], value: T) -> &'static str {
    names
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("?", |(n, _)| n)
}

/// The `[bus]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusConfig {
    /// The adapter.
    pub adapter: BusAdapter,
    /// The broker URL (RabbitMQ).
    pub url: Option<SecretUrl>,
    /// Broker URLs of a cluster (RabbitMQ), tried in order on connect and on every
    /// reconnect; when set, `url` is not used.
    pub urls: Vec<SecretUrl>,
    /// Deliveries one subscription handles at once in one process (RabbitMQ), default
    /// 64, the default `prefetch`, so no delivery the broker hands over waits for a slot;
    /// a binding's `concurrency` overrides it. `prefetch` is raised to at least it.
    pub concurrency: u16,
    /// How long a dispatch or publish may take in all (waiting for a connection, sending,
    /// the broker's confirm) before it fails (RabbitMQ), default 30,000 ms.
    pub confirm_timeout_ms: u32,
    /// The type of every queue (RabbitMQ): `classic` (default) or `quorum`. An existing
    /// queue of the other type is refused at subscribe, never redeclared.
    pub queue_type: QueueType,
    /// Unacknowledged deliveries a consumer may hold (RabbitMQ `prefetch`), default 64.
    pub prefetch: u16,
    /// How long a failed message waits before its retry (RabbitMQ), default 1000 ms.
    pub retry_delay_ms: u32,
    /// The largest message body published or consumed, default 4 MiB.
    pub max_message_bytes: usize,
    /// The first word of every exchange and queue name (RabbitMQ), default `orkestra`:
    /// separate apps or test runs on one broker by giving each its own.
    pub prefix: String,
    /// Delete work and wait queues unused for this long (RabbitMQ `x-expires`); off by
    /// default. For tests and short-lived environments.
    pub queue_expiry_ms: Option<u32>,
    /// Where `once: true` handlers record what they handled: `memory` (default) or
    /// `store` (env `ORKESTRA_BUS_INBOX`).
    pub inbox: InboxMode,
    /// Where the bus gets the keys of personal data: `none` (default) or `store` (env
    /// `ORKESTRA_BUS_KEYS`): the store given to `Bus::with_store`.
    pub keys: KeysMode,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            adapter: BusAdapter::default(),
            url: None,
            urls: Vec::new(),
            concurrency: 64,
            confirm_timeout_ms: 30_000,
            queue_type: QueueType::Classic,
            prefetch: 64,
            retry_delay_ms: 1000,
            max_message_bytes: 4 * 1024 * 1024,
            prefix: "orkestra".to_owned(),
            queue_expiry_ms: None,
            inbox: InboxMode::Memory,
            keys: KeysMode::None,
        }
    }
}

/// The `[store]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// The adapter.
    pub adapter: StoreAdapter,
    /// The database URL, or for `sqlite` the file path.
    pub url: Option<SecretUrl>,
    /// Who publishes stored events.
    pub publish: PublishMode,
    /// Connections for appends, reads and projection batches (PostgreSQL), default 16
    /// (env `ORKESTRA_STORE_POOL_SIZE`); projection batches hold at most three quarters.
    pub pool_size: u32,
    /// How long a store call waits for a free connection before it fails naming this
    /// setting (PostgreSQL), default 30,000 ms (env `ORKESTRA_STORE_POOL_TIMEOUT_MS`).
    pub pool_timeout_ms: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            adapter: StoreAdapter::default(),
            url: None,
            publish: PublishMode::default(),
            pool_size: 16,
            pool_timeout_ms: 30_000,
        }
    }
}

/// The `[runners]` section: how the long-running workers of several copies of a service
/// (projections, the relay, process managers) hold their partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunnersConfig {
    /// How long a copy holds a partition without renewing it (it renews every third):
    /// after a copy dies, its partitions wait this long for another. Default 10 s, from
    /// 1 s to 10 min (env `ORKESTRA_RUNNERS_LEASE`, written `"10s"`, `"1500ms"`, `"2m"`).
    pub lease: std::time::Duration,
}

impl Default for RunnersConfig {
    fn default() -> Self {
        Self {
            lease: DEFAULT_LEASE,
        }
    }
}

/// `runners.lease` unless configured.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(10);

/// `runners.lease`'s bounds: long enough to renew through a hiccup, short enough that a
/// dead copy's work does not wait for long.
const LEASES: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(600),
);

/// A lease written `"10s"`, `"1500ms"` or `"2m"`, within [`LEASES`].
fn lease(value: &str, origin: String) -> Result<std::time::Duration, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        setting: "runners.lease",
        origin: origin.clone(),
        message,
    };
    let text = value.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().map_err(|_| {
        invalid(format!(
            "{value:?} is not a duration; write a whole number with ms, s or m, like \"10s\""
        ))
    })?;
    let duration = match unit.trim() {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "m" | "min" => std::time::Duration::from_secs(n.saturating_mul(60)),
        _ => {
            return Err(invalid(format!(
                "{value:?} is not a duration; write a whole number with ms, s or m, like \"10s\""
            )));
        }
    };
    if !(LEASES.0..=LEASES.1).contains(&duration) {
        return Err(invalid(format!(
            "{value:?} is out of range; a lease lasts from 1s to 10m"
        )));
    }
    Ok(duration)
}

/// The whole configuration. `Config::default()` is the in-process bus and the embedded store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The bus.
    pub bus: BusConfig,
    /// The event store.
    pub store: StoreConfig,
    /// The workers' leases.
    pub runners: RunnersConfig,
}

/// Why a configuration was refused.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is not valid TOML or has a key or type the configuration does not know.
    #[error("{origin}: {message}")]
    Syntax {
        /// The file.
        origin: String,
        /// The parser's located message.
        message: String,
    },
    /// A setting has a value it cannot take.
    #[error("{setting} ({origin}): {message}")]
    Invalid {
        /// The setting, such as `bus.adapter`.
        setting: &'static str,
        /// Where its value came from: `orkestra.toml:3:11` or `env ORKESTRA_BUS_ADAPTER`.
        origin: String,
        /// What is wrong, with secrets hidden.
        message: String,
    },
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
}

impl Config {
    /// Reads `./orkestra.toml` when it exists, then applies the `ORKESTRA_BUS_ADAPTER`,
    /// `ORKESTRA_BUS_URL`, `ORKESTRA_BUS_INBOX`, `ORKESTRA_BUS_KEYS`, `ORKESTRA_STORE_ADAPTER`,
    /// `ORKESTRA_STORE_URL`, `ORKESTRA_STORE_PUBLISH`, `ORKESTRA_STORE_POOL_SIZE` and
    /// `ORKESTRA_STORE_POOL_TIMEOUT_MS` and `ORKESTRA_RUNNERS_LEASE` overrides.
    pub fn load() -> Result<Self, ConfigError> {
        let path = Path::new(DEFAULT_FILE);
        let config = if path.exists() {
            Self::from_file(path)?
        } else {
            Self::default()
        };
        config.with_env_overrides(|name| std::env::var(name).ok())
    }

    /// Reads a TOML file (no environment overrides).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses TOML text (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, DEFAULT_FILE)
    }

    /// Applies environment overrides read through `var` (for tests, a closure over a map).
    pub fn with_env_overrides(
        mut self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        if let Some(value) = var("ORKESTRA_BUS_ADAPTER") {
            let origin = "env ORKESTRA_BUS_ADAPTER".to_owned();
            self.bus.adapter = adapter("bus.adapter", BusAdapter::NAMES, &value, origin)?;
        }
        if let Some(value) = var("ORKESTRA_BUS_URL") {
            self.bus.url = Some(SecretUrl::new(value));
        }
        if let Some(value) = var("ORKESTRA_STORE_ADAPTER") {
            let origin = "env ORKESTRA_STORE_ADAPTER".to_owned();
            self.store.adapter = adapter("store.adapter", StoreAdapter::NAMES, &value, origin)?;
        }
        if let Some(value) = var("ORKESTRA_STORE_URL") {
            self.store.url = Some(SecretUrl::new(value));
        }
        if let Some(value) = var("ORKESTRA_BUS_INBOX") {
            let origin = "env ORKESTRA_BUS_INBOX".to_owned();
            self.bus.inbox = choice("bus.inbox", InboxMode::NAMES, &value, origin)?;
        }
        if let Some(value) = var("ORKESTRA_BUS_KEYS") {
            let origin = "env ORKESTRA_BUS_KEYS".to_owned();
            self.bus.keys = choice("bus.keys", KeysMode::NAMES, &value, origin)?;
        }
        if let Some(value) = var("ORKESTRA_STORE_PUBLISH") {
            let origin = "env ORKESTRA_STORE_PUBLISH".to_owned();
            self.store.publish = choice("store.publish", PublishMode::NAMES, &value, origin)?;
        }
        if let Some(value) = var("ORKESTRA_STORE_POOL_SIZE") {
            let origin = "env ORKESTRA_STORE_POOL_SIZE".to_owned();
            self.store.pool_size = number("store.pool_size", &value, POOL_SIZES, origin)?;
        }
        if let Some(value) = var("ORKESTRA_RUNNERS_LEASE") {
            self.runners.lease = lease(&value, "env ORKESTRA_RUNNERS_LEASE".to_owned())?;
        }
        if let Some(value) = var("ORKESTRA_STORE_POOL_TIMEOUT_MS") {
            let origin = "env ORKESTRA_STORE_POOL_TIMEOUT_MS".to_owned();
            self.store.pool_timeout_ms =
                number("store.pool_timeout_ms", &value, POOL_TIMEOUTS, origin)?;
        }
        self.check_urls(&|setting| match setting {
            "bus.url" if var("ORKESTRA_BUS_URL").is_some() => Some("env ORKESTRA_BUS_URL".into()),
            "store.url" if var("ORKESTRA_STORE_URL").is_some() => {
                Some("env ORKESTRA_STORE_URL".into())
            }
            _ => None,
        })?;
        Ok(self)
    }

    fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let at = |span: Range<usize>| {
            let (line, col) = line_col(text, span.start);
            format!("{origin}:{line}:{col}")
        };
        let mut config = Self::default();
        let mut url_origins: Vec<(&'static str, String)> = Vec::new();
        if let Some(bus) = raw.bus {
            if let Some(a) = bus.adapter {
                config.bus.adapter =
                    adapter("bus.adapter", BusAdapter::NAMES, a.get_ref(), at(a.span()))?;
            }
            if let Some(u) = bus.url {
                url_origins.push(("bus.url", at(u.span())));
                config.bus.url = Some(SecretUrl::new(u.into_inner()));
            }
            let range = |setting: &'static str, v: Option<Spanned<i64>>, min: i64, max: i64| match v
            {
                None => Ok(None),
                Some(v) if (min..=max).contains(v.get_ref()) => Ok(Some(*v.get_ref())),
                Some(v) => Err(ConfigError::Invalid {
                    setting,
                    origin: at(v.span()),
                    message: format!("{} is out of range; expected {min} to {max}", v.get_ref()),
                }),
            };
            if let Some(t) = bus.queue_type {
                config.bus.queue_type = QueueType::NAMES
                    .iter()
                    .find(|(name, _)| name == t.get_ref())
                    .map(|(_, q)| *q)
                    .ok_or_else(|| ConfigError::Invalid {
                        setting: "bus.queue_type",
                        origin: at(t.span()),
                        message: format!(
                            "unknown queue type {:?}; expected classic or quorum",
                            t.get_ref()
                        ),
                    })?;
            }
            if let Some(list) = bus.urls {
                for u in list {
                    url_origins.push(("bus.urls", at(u.span())));
                    config.bus.urls.push(SecretUrl::new(u.into_inner()));
                }
            }
            if let Some(v) = range("bus.prefetch", bus.prefetch, 1, i64::from(u16::MAX))? {
                config.bus.prefetch = v as u16;
            }
            if let Some(v) = range("bus.concurrency", bus.concurrency, 1, i64::from(u16::MAX))? {
                config.bus.concurrency = v as u16;
            }
            if let Some(v) = range(
                "bus.confirm_timeout_ms",
                bus.confirm_timeout_ms,
                1,
                i64::from(u32::MAX),
            )? {
                config.bus.confirm_timeout_ms = v as u32;
            }
            if let Some(v) = range(
                "bus.retry_delay_ms",
                bus.retry_delay_ms,
                1,
                i64::from(u32::MAX),
            )? {
                config.bus.retry_delay_ms = v as u32;
            }
            if let Some(v) = range(
                "bus.max_message_bytes",
                bus.max_message_bytes,
                1,
                512 * 1024 * 1024,
            )? {
                config.bus.max_message_bytes = v as usize;
            }
            if let Some(v) = range(
                "bus.queue_expiry_ms",
                bus.queue_expiry_ms,
                1,
                i64::from(u32::MAX),
            )? {
                config.bus.queue_expiry_ms = Some(v as u32);
            }
            if let Some(p) = bus.prefix {
                let ok = !p.get_ref().is_empty()
                    && p.get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !ok {
                    return Err(ConfigError::Invalid {
                        setting: "bus.prefix",
                        origin: at(p.span()),
                        message: format!(
                            "{:?} must be non-empty letters, digits, '-', '_' or '.'",
                            p.get_ref()
                        ),
                    });
                }
                config.bus.prefix = p.into_inner();
            }
            if let Some(i) = bus.inbox {
                config.bus.inbox =
                    choice("bus.inbox", InboxMode::NAMES, i.get_ref(), at(i.span()))?;
            }
            if let Some(k) = bus.keys {
                config.bus.keys = choice("bus.keys", KeysMode::NAMES, k.get_ref(), at(k.span()))?;
            }
        }
        if let Some(store) = raw.store {
            if let Some(a) = store.adapter {
                config.store.adapter = adapter(
                    "store.adapter",
                    StoreAdapter::NAMES,
                    a.get_ref(),
                    at(a.span()),
                )?;
            }
            if let Some(u) = store.url {
                url_origins.push(("store.url", at(u.span())));
                config.store.url = Some(SecretUrl::new(u.into_inner()));
            }
            if let Some(p) = store.publish {
                config.store.publish = choice(
                    "store.publish",
                    PublishMode::NAMES,
                    p.get_ref(),
                    at(p.span()),
                )?;
            }
            for (setting, value, range, target) in [
                (
                    "store.pool_size",
                    store.pool_size,
                    POOL_SIZES,
                    &mut config.store.pool_size,
                ),
                (
                    "store.pool_timeout_ms",
                    store.pool_timeout_ms,
                    POOL_TIMEOUTS,
                    &mut config.store.pool_timeout_ms,
                ),
            ] {
                if let Some(v) = value {
                    *target = in_range(setting, *v.get_ref(), range, at(v.span()))?;
                }
            }
        }
        if let Some(runners) = raw.runners
            && let Some(l) = runners.lease
        {
            config.runners.lease = lease(l.get_ref(), at(l.span()))?;
        }
        config.check_urls(&|setting| {
            url_origins
                .iter()
                .find(|(s, _)| *s == setting)
                .map(|(_, o)| o.clone())
        })?;
        Ok(config)
    }

    /// Checks that each URL fits its adapter; `origin_of` says where a setting came from.
    fn check_urls(&self, origin_of: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let invalid = |setting: &'static str, message: String| ConfigError::Invalid {
            setting,
            origin: origin_of(setting).unwrap_or_else(|| "configuration".into()),
            message,
        };
        let bus_schemes: &[&str] = match self.bus.adapter {
            BusAdapter::InProcess => &[],
            BusAdapter::RabbitMq => &["amqp", "amqps"],
        };
        if let Some(url) = &self.bus.url {
            check_url(url, bus_schemes).map_err(|m| invalid("bus.url", m))?;
        }
        for url in &self.bus.urls {
            check_url(url, bus_schemes).map_err(|m| invalid("bus.urls", m))?;
        }
        if let Some(url) = &self.store.url {
            let schemes: &[&str] = match self.store.adapter {
                StoreAdapter::Sqlite | StoreAdapter::Memory => &[],
                StoreAdapter::Postgres => &["postgres", "postgresql"],
                StoreAdapter::EventStoreDb => &[
                    "esdb",
                    "esdb+discover",
                    "kurrentdb",
                    "kurrentdb+discover",
                    "kurrent",
                    "kurrent+discover",
                ],
            };
            check_url(url, schemes).map_err(|m| invalid("store.url", m))?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    bus: Option<RawSection>,
    store: Option<RawStoreSection>,
    runners: Option<RawRunnersSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunnersSection {
    lease: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStoreSection {
    adapter: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    publish: Option<Spanned<String>>,
    pool_size: Option<Spanned<i64>>,
    pool_timeout_ms: Option<Spanned<i64>>,
}

/// `store.pool_size`: at least 2, so projection batches always leave one connection.
const POOL_SIZES: (u32, u32) = (2, 1_000);
/// `store.pool_timeout_ms`.
const POOL_TIMEOUTS: (u32, u32) = (1, 3_600_000);

/// `value` when it lies in `range`, else an error naming `setting` and `origin`.
fn in_range(
    setting: &'static str,
    value: i64,
    (min, max): (u32, u32),
    origin: String,
) -> Result<u32, ConfigError> {
    u32::try_from(value)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| ConfigError::Invalid {
            setting,
            origin,
            message: format!("{value} is out of range; expected {min} to {max}"),
        })
}

/// An environment variable's number for `setting`, checked against `range`.
fn number(
    setting: &'static str,
    value: &str,
    range: (u32, u32),
    origin: String,
) -> Result<u32, ConfigError> {
    let parsed: i64 = value.trim().parse().map_err(|_| ConfigError::Invalid {
        setting,
        origin: origin.clone(),
        message: format!("{value:?} is not a whole number"),
    })?;
    in_range(setting, parsed, range, origin)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    adapter: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    urls: Option<Vec<Spanned<String>>>,
    prefetch: Option<Spanned<i64>>,
    concurrency: Option<Spanned<i64>>,
    confirm_timeout_ms: Option<Spanned<i64>>,
    queue_type: Option<Spanned<String>>,
    retry_delay_ms: Option<Spanned<i64>>,
    max_message_bytes: Option<Spanned<i64>>,
    prefix: Option<Spanned<String>>,
    queue_expiry_ms: Option<Spanned<i64>>,
    inbox: Option<Spanned<String>>,
    keys: Option<Spanned<String>>,
}

fn adapter<T: Copy>(
    setting: &'static str,
    names: &[(&'static str, T)],
    value: &str,
    origin: String,
) -> Result<T, ConfigError> {
    names
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, adapter)| *adapter)
        .ok_or_else(|| ConfigError::Invalid {
            setting,
            origin,
            message: format!(
                "unknown adapter {value:?}; expected one of: {}",
                names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        })
}

fn choice<T: Copy>(
    setting: &'static str,
    names: &[(&'static str, T)],
    value: &str,
    origin: String,
) -> Result<T, ConfigError> {
    names
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| ConfigError::Invalid {
            setting,
            origin,
            message: format!(
                "unknown value {value:?}; expected one of: {}",
                names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        })
}

/// An empty `schemes` accepts anything non-empty (a file path, say).
fn check_url(url: &SecretUrl, schemes: &[&str]) -> Result<(), String> {
    let raw = url.expose();
    if raw.trim().is_empty() {
        return Err("the URL is empty".into());
    }
    if schemes.is_empty() {
        return Ok(());
    }
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Err(format!("{url} is not a URL; expected {}://…", schemes[0]));
    };
    if !schemes.contains(&scheme) {
        return Err(format!(
            "{url} has scheme {scheme:?}; expected one of: {}",
            schemes.join(", ")
        ));
    }
    // The host starts after the last `@` (a password may hold `/`, `?`, `#` or `@`)
    // and ends at the path, query or fragment.
    let after_userinfo = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = after_userinfo.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("{url} has no host"));
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']'))
        && port.parse::<u16>().is_err()
    {
        return Err(format!("{url} has an invalid port {port:?}"));
    }
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_in_process_and_sqlite() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.bus.adapter, BusAdapter::InProcess);
        assert_eq!(c.store.adapter, StoreAdapter::Sqlite);
        assert_eq!(c, Config::default());
    }

    #[test]
    fn reads_the_documented_file() {
        let c = Config::from_toml_str(
            "[bus]\nadapter = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
             [store]\nadapter = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:5432/test\"\n",
        )
        .unwrap();
        assert_eq!(c.bus.adapter, BusAdapter::RabbitMq);
        assert_eq!(c.store.adapter, StoreAdapter::Postgres);
        assert_eq!(
            c.bus.url.unwrap().expose(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn store_publish_is_direct_or_relay_with_located_errors() {
        let c = Config::from_toml_str("[store]\npublish = \"relay\"\n").unwrap();
        assert_eq!(c.store.publish, PublishMode::Relay);
        assert_eq!(Config::default().store.publish, PublishMode::Direct);
        let e = Config::from_toml_str("[store]\npublish = \"outbox\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "store.publish (orkestra.toml:2:11): unknown value \"outbox\"; expected one of: direct, relay"
        );
        let e = Config::from_toml_str("[store]\npublish = true\n").unwrap_err();
        assert!(e.to_string().contains("orkestra.toml"), "{e}");
        let c = Config::default()
            .with_env_overrides(|k| (k == "ORKESTRA_STORE_PUBLISH").then(|| "relay".to_owned()))
            .unwrap();
        assert_eq!(c.store.publish, PublishMode::Relay);
        let e = Config::default()
            .with_env_overrides(|k| (k == "ORKESTRA_STORE_PUBLISH").then(|| "later".to_owned()))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("store.publish (env ORKESTRA_STORE_PUBLISH)"),
            "{e}"
        );
    }

    #[test]
    fn the_runners_lease_is_read_and_checked_with_located_errors() {
        use std::time::Duration;
        assert_eq!(Config::default().runners.lease, Duration::from_secs(10));
        for (text, want) in [
            ("10s", Duration::from_secs(10)),
            ("1500ms", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("10m", Duration::from_secs(600)),
        ] {
            let c = Config::from_toml_str(&format!("[runners]\nlease = \"{text}\"\n")).unwrap();
            assert_eq!(c.runners.lease, want, "{text}");
        }
        let e = Config::from_toml_str("[runners]\nlease = \"500ms\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "runners.lease (orkestra.toml:2:9): \"500ms\" is out of range; a lease lasts from 1s to 10m"
        );
        let e = Config::from_toml_str("[runners]\nlease = \"11m\"\n").unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = Config::from_toml_str("[runners]\nlease = \"soon\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("runners.lease (orkestra.toml:2:9): \"soon\" is not a duration"),
            "{e}"
        );
        let e = Config::from_toml_str("[runners]\nlease = 10\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = Config::from_toml_str("[runners]\nleese = \"10s\"\n").unwrap_err();
        assert!(e.to_string().contains("leese"), "{e}");
        let c = Config::default()
            .with_env_overrides(|k| (k == "ORKESTRA_RUNNERS_LEASE").then(|| "3s".to_owned()))
            .unwrap();
        assert_eq!(c.runners.lease, Duration::from_secs(3));
        let e = Config::default()
            .with_env_overrides(|k| (k == "ORKESTRA_RUNNERS_LEASE").then(|| "0s".to_owned()))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("runners.lease (env ORKESTRA_RUNNERS_LEASE)"),
            "{e}"
        );
    }

    #[test]
    fn store_pool_size_and_timeout_are_read_and_checked_with_located_errors() {
        let c = Config::default();
        assert_eq!((c.store.pool_size, c.store.pool_timeout_ms), (16, 30_000));
        let c = Config::from_toml_str("[store]\npool_size = 40\npool_timeout_ms = 2500\n").unwrap();
        assert_eq!((c.store.pool_size, c.store.pool_timeout_ms), (40, 2500));
        let e = Config::from_toml_str("[store]\npool_size = 1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "store.pool_size (orkestra.toml:2:13): 1 is out of range; expected 2 to 1000"
        );
        let e = Config::from_toml_str("[store]\npool_timeout_ms = -5\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "store.pool_timeout_ms (orkestra.toml:2:19): -5 is out of range; expected 1 to 3600000"
        );
        let e = Config::from_toml_str("[store]\npool_size = \"big\"\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(e.to_string().contains("pool_size"), "{e}");
        let e = Config::from_toml_str("[store]\npool_sise = 4\n").unwrap_err();
        assert!(e.to_string().contains("pool_sise"), "{e}");
        let env = |name: &str| match name {
            "ORKESTRA_STORE_POOL_SIZE" => Some("8".to_owned()),
            "ORKESTRA_STORE_POOL_TIMEOUT_MS" => Some("750".to_owned()),
            _ => None,
        };
        let c = Config::default().with_env_overrides(env).unwrap();
        assert_eq!((c.store.pool_size, c.store.pool_timeout_ms), (8, 750));
        let e = Config::default()
            .with_env_overrides(|k| (k == "ORKESTRA_STORE_POOL_SIZE").then(|| "lots".to_owned()))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "store.pool_size (env ORKESTRA_STORE_POOL_SIZE): \"lots\" is not a whole number"
        );
        let e = Config::default()
            .with_env_overrides(|k| (k == "ORKESTRA_STORE_POOL_TIMEOUT_MS").then(|| "0".to_owned()))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "store.pool_timeout_ms (env ORKESTRA_STORE_POOL_TIMEOUT_MS): 0 is out of range; expected 1 to 3600000"
        );
    }

    #[test]
    fn bus_keys_are_none_or_store_with_located_errors() {
        assert_eq!(Config::default().bus.keys, KeysMode::None);
        let c = Config::from_toml_str("[bus]\nkeys = \"store\"\n").unwrap();
        assert_eq!(c.bus.keys, KeysMode::Store);
        assert_eq!(c.bus.keys.name(), "store");
        let e = Config::from_toml_str("[bus]\nkeys = \"kms\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bus.keys (orkestra.toml:2:8): unknown value \"kms\"; expected one of: none, store"
        );
        let c = Config::default()
            .with_env_overrides(|k| (k == "ORKESTRA_BUS_KEYS").then(|| "store".to_owned()))
            .unwrap();
        assert_eq!(c.bus.keys, KeysMode::Store);
        let e = Config::default()
            .with_env_overrides(|k| (k == "ORKESTRA_BUS_KEYS").then(|| "yes".to_owned()))
            .unwrap_err();
        assert!(e.to_string().contains("env ORKESTRA_BUS_KEYS"), "{e}");
    }

    #[test]
    fn bus_inbox_is_memory_or_store_with_located_errors() {
        assert_eq!(Config::default().bus.inbox, InboxMode::Memory);
        let c = Config::from_toml_str("[bus]\ninbox = \"store\"\n").unwrap();
        assert_eq!(c.bus.inbox, InboxMode::Store);
        let e = Config::from_toml_str("[bus]\ninbox = \"redis\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bus.inbox (orkestra.toml:2:9): unknown value \"redis\"; expected one of: memory, store"
        );
    }

    #[test]
    fn unknown_adapter_names_the_setting_and_place() {
        let e = Config::from_toml_str("[bus]\nadapter = \"rabbit\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bus.adapter (orkestra.toml:2:11): unknown adapter \"rabbit\"; expected one of: in_process, rabbitmq"
        );
        let e = Config::from_toml_str("[store]\nadapter = \"mongo\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("store.adapter (orkestra.toml:2:11): unknown adapter \"mongo\""),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_located() {
        let e = Config::from_toml_str("[bus]\nadaptor = \"rabbitmq\"\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("adaptor"), "{text}");
        let e = Config::from_toml_str("[bus]\nadapter = 3\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = Config::from_toml_str("[bus\n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        let e = Config::from_toml_str("[queue]\n").unwrap_err();
        assert!(e.to_string().contains("queue"), "{e}");
    }

    #[test]
    fn malformed_urls_are_refused_without_the_password() {
        let e = Config::from_toml_str(
            "[bus]\nadapter = \"rabbitmq\"\nurl = \"http://guest:s3cret@host\"\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("bus.url (orkestra.toml:3:7): "), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let e = Config::from_toml_str(
            "[store]\nadapter = \"postgres\"\nurl = \"postgres://u:s3cret@db:54x2/x\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("invalid port"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = Config::from_toml_str("[store]\nadapter = \"postgres\"\nurl = \"not a url\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("store.url"), "{e}");
    }

    #[test]
    fn bus_tuning_settings_are_checked() {
        let c = Config::from_toml_str("[bus]\nprefetch = 500\nretry_delay_ms = 250\n").unwrap();
        assert_eq!((c.bus.prefetch, c.bus.retry_delay_ms), (500, 250));
        let e = Config::from_toml_str("[bus]\nprefetch = 0\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bus.prefetch (orkestra.toml:2:12): 0 is out of range; expected 1 to 65535"
        );
        let e = Config::from_toml_str("[store]\nprefetch = 5\n").unwrap_err();
        assert!(e.to_string().contains("prefetch"), "{e}");
    }

    #[test]
    fn cluster_urls_concurrency_and_confirm_timeout_are_read_and_checked() {
        let c = Config::from_toml_str(
            "[bus]\nadapter = \"rabbitmq\"\nurls = [\"amqp://u:pw@a:5672/%2f\", \"amqp://u:pw@b/%2f\"]\n\
             concurrency = 8\nconfirm_timeout_ms = 5000\n",
        )
        .unwrap();
        assert_eq!(c.bus.urls.len(), 2);
        assert_eq!(c.bus.urls[1].expose(), "amqp://u:pw@b/%2f");
        assert_eq!((c.bus.concurrency, c.bus.confirm_timeout_ms), (8, 5000));
        assert_eq!(Config::default().bus.concurrency, 64);
        let c = Config::from_toml_str("[bus]\nqueue_type = \"quorum\"\n").unwrap();
        assert_eq!(c.bus.queue_type, QueueType::Quorum);
        let e = Config::from_toml_str("[bus]\nqueue_type = \"stream\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("bus.queue_type (orkestra.toml:2:14): unknown queue type \"stream\""),
            "{e}"
        );
        let e = Config::from_toml_str(
            "[bus]\nadapter = \"rabbitmq\"\nurls = [\"amqp://u:s3cret@a/%2f\", \"http://u:s3cret@b\"]\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("bus.urls (orkestra.toml:3:"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let e = Config::from_toml_str("[bus]\nconcurrency = 0\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("bus.concurrency (orkestra.toml:2:15)"),
            "{e}"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = Config::from_toml_str("[bus]\nadapter = \"rabbitmq\"\n").unwrap();
        let env = |name: &str| match name {
            "ORKESTRA_BUS_ADAPTER" => Some("in_process".to_owned()),
            "ORKESTRA_STORE_ADAPTER" => Some("memory".to_owned()),
            _ => None,
        };
        let c = file.with_env_overrides(env).unwrap();
        assert_eq!(c.bus.adapter, BusAdapter::InProcess);
        assert_eq!(c.store.adapter, StoreAdapter::Memory);

        let e = Config::default()
            .with_env_overrides(|n| (n == "ORKESTRA_STORE_ADAPTER").then(|| "oracle".to_owned()))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("store.adapter (env ORKESTRA_STORE_ADAPTER): unknown adapter"),
            "{e}"
        );

        let e = Config::default()
            .with_env_overrides(|n| match n {
                "ORKESTRA_BUS_ADAPTER" => Some("rabbitmq".into()),
                "ORKESTRA_BUS_URL" => Some("amqp://guest:hunter2@".into()),
                _ => None,
            })
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("bus.url (env ORKESTRA_BUS_URL): "),
            "{e}"
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn redaction() {
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            ("amqp://guest@127.0.0.1", "amqp://guest@127.0.0.1"),
            ("amqp://127.0.0.1", "amqp://127.0.0.1"),
            (
                "postgres://u:p%40ss@db/x?sslmode=require",
                "postgres://u:***@db/x?sslmode=require",
            ),
            ("postgres://u:p@ss@db/x", "postgres://u:***@db/x"),
            (
                "postgres://db/x?user=u&password=pw&x=1",
                "postgres://db/x?user=u&password=***&x=1",
            ),
            (
                "host=db user=u password=pw dbname=x",
                "host=db user=u password=*** dbname=x",
            ),
            ("./orkestra.db", "./orkestra.db"),
            // Passwords holding URL delimiters are hidden whole.
            (
                "amqp://guest:pa/ss@h:5672/%2f",
                "amqp://guest:***@h:5672/%2f",
            ),
            ("amqp://u:a?b#c@h/v", "amqp://u:***@h/v"),
            ("amqp://u:pw%2Fx@h", "amqp://u:***@h"),
            // Every URL of an error message, quoted or not.
            (
                "cannot reach \"amqp://a:pw1@h1\" nor amqp://b:pw2@h2/x: refused",
                "cannot reach \"amqp://a:***@h1\" nor amqp://b:***@h2/x: refused",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(input), expected, "{input}");
            let secret = SecretUrl::new(input);
            assert_eq!(format!("{secret}"), expected);
            assert!(!format!("{secret:?}").contains("pw"));
            for secret in ["pa/ss", "a?b#c", "pw1", "pw2"] {
                assert!(!redact(input).contains(secret), "{input}");
            }
        }
    }

    #[test]
    fn a_password_with_delimiters_never_reaches_a_url_error() {
        let config = Config::from_toml_str(
            "[bus]\nadapter = \"rabbitmq\"\nurl = \"amqp://guest:pa/ss:x@127.0.0.1:notaport/%2f\"\n",
        );
        let text = format!(
            "{:?} {}",
            config,
            config
                .as_ref()
                .map_or_else(|e| e.to_string(), |_| String::new())
        );
        assert!(!text.contains("pa/ss"), "{text}");
        assert!(text.contains("invalid port \"notaport\""), "{text}");
    }
}
