//! Fresh PostgreSQL databases for tests and benches that must start from an empty
//! server-side state (no cached plans, no statistics): `CREATE DATABASE` with a unique
//! name, dropped when the guard is dropped, also when the test fails.

use orkestra_runtime::SecretUrl;

/// The server URL the tests use (`ORKESTRA_PG_URL` or the local default).
fn base_url() -> String {
    std::env::var("ORKESTRA_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database created for one test; dropped (`WITH (FORCE)`) with the guard.
pub struct FreshDatabase {
    name: String,
    admin: tokio_postgres::Config,
    config: tokio_postgres::Config,
}

impl FreshDatabase {
    /// Creates `orkestra_<prefix>_<uuid>` on the test server; `Err` when the server is
    /// unreachable.
    pub async fn create(prefix: &str) -> Result<Self, String> {
        let base: tokio_postgres::Config = base_url().parse().map_err(|e| format!("{e}"))?;
        let mut admin = base.clone();
        admin.dbname("postgres");
        let name = format!("orkestra_{prefix}_{}", uuid::Uuid::new_v4().simple());
        let client = connect(&admin).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        let mut config = base;
        config.dbname(&name);
        Ok(Self {
            name,
            admin,
            config,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL of the database for `Store::postgres`.
    pub fn url(&self) -> SecretUrl {
        let base = base_url();
        let (server, _) = base.rsplit_once('/').unwrap_or((&base, ""));
        SecretUrl::new(format!("{server}/{}", self.name))
    }

    /// A plain connection to the database (statistics, direct SQL).
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.config)
            .await
            .expect("connect to the fresh database")
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("{e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Its own thread and runtime: drop may run inside (or after) the test's runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async {
                if let Ok(client) = connect(&admin).await {
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// `seq_scan` of `table` in `pg_stat_user_tables`, read once the counters have settled
/// (backends report their counts at most once a second).
pub async fn seq_scans(client: &tokio_postgres::Client, table: &str) -> i64 {
    let read = || async {
        client
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        client
            .query_opt(
                "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = $1",
                &[&table],
            )
            .await
            .unwrap()
            .map_or(0, |row| row.get::<_, i64>(0))
    };
    let mut last = read().await;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        let now = read().await;
        if now == last {
            return now;
        }
        last = now;
    }
    last
}
