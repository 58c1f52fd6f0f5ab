//! The operator files under `ops/`, held to the metrics the runtime exports: the alert
//! rules (`promtool check rules`, their unit tests, a firing and a quiet case for every
//! alert), the Grafana dashboard (valid JSON, a Prometheus data source variable, every
//! instrument on a panel, queries promtool parses), and a real Prometheus scraping a
//! service on the in-process bus.

#[path = "../orkestra-runtime/tests/support/services.rs"]
#[allow(dead_code)]
mod services;

#[path = "ops/exported.rs"]
mod exported;
#[path = "ops/prometheus.rs"]
mod prometheus;
#[path = "ops/promql.rs"]
mod promql;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant, SystemTime};

use orkestra_runtime::telemetry::Telemetry;
use orkestra_runtime::{
    Bus, Command, CommandEnvelope, CommandStatus, HandlerContext, HandlerError, Metadata,
};
use orkestra_tests::orders::commands::PlaceOrder;
use orkestra_tests::orders::handlers::place_order_handler;
use serde::Deserialize;
use serde_json::{Value, json};

use exported::{EXPORTED, Kind, SCRAPE_SERIES, TARGET_LABELS, family_of, series_names};
use prometheus::Prometheus;

fn ops() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The alerts the rules must have, one per condition operators are promised.
const ALERTS: &[&str] = &[
    "OrkestraDeadLetters",
    "OrkestraProjectionLagging",
    "OrkestraRelayLagging",
    "OrkestraPartitionUnheld",
    "OrkestraBusReconnecting",
    "OrkestraHandlerFailing",
];

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct RuleTests {
    tests: Vec<RuleTest>,
}

#[derive(Debug, Deserialize)]
struct RuleTest {
    name: String,
    #[serde(default)]
    alert_rule_test: Vec<AlertCase>,
}

#[derive(Debug, Deserialize)]
struct AlertCase {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<serde_json::Map<String, Value>>,
}

fn rules() -> Vec<Rule> {
    let path = ops().join("prometheus/alerts.yml");
    let file: RuleFile =
        serde_saphyr::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.groups
        .into_iter()
        .inspect(|g| assert!(!g.rules.is_empty(), "group {} has no rules", g.name))
        .flat_map(|g| g.rules)
        .collect()
}

/// Checks that `expr` reads only what the runtime exports, a scrape's own series, or
/// `recorded` (the recording rules of the same file, with their labels), and only
/// labels those carry: the metric names it reads.
fn check_names(
    what: &str,
    expr: &str,
    recorded: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeSet<String> {
    let known = series_names();
    let reads = promql::reads(expr).unwrap_or_else(|e| panic!("{what}: {e} in {expr}"));
    assert!(!reads.metrics.is_empty(), "{what} reads no metric: {expr}");
    let labels_of = |name: &str| -> BTreeSet<String> {
        let mut labels: BTreeSet<String> = exported::labels_of(name)
            .into_iter()
            .map(String::from)
            .collect();
        labels.extend(TARGET_LABELS.iter().map(|l| l.to_string()));
        labels.extend(recorded.get(name).into_iter().flatten().cloned());
        labels
    };
    for name in &reads.metrics {
        assert!(
            known.contains(name)
                || SCRAPE_SERIES.contains(&name.as_str())
                || recorded.contains_key(name),
            "{what} reads `{name}`, which the runtime does not export (exported: {known:?}): {expr}"
        );
    }
    for (metric, labels) in &reads.matchers {
        let metric = metric
            .as_deref()
            .unwrap_or_else(|| panic!("{what}: a selector without a metric name: {expr}"));
        let allowed = labels_of(metric);
        for label in labels {
            assert!(
                allowed.contains(label),
                "{what} matches `{metric}` on `{label}`, which it does not carry ({allowed:?}): {expr}"
            );
        }
    }
    let mut allowed: BTreeSet<String> = reads.metrics.iter().flat_map(|m| labels_of(m)).collect();
    allowed.insert("le".into());
    for label in &reads.grouping {
        assert!(
            allowed.contains(label),
            "{what} groups by `{label}`, which none of its metrics carries ({allowed:?}): {expr}"
        );
    }
    reads.metrics
}

#[test]
fn the_metric_name_scan_finds_names_and_skips_everything_else() {
    let names = promql::metric_names(
        r#"sum by (job, orkestra_handler) (rate(a_total{orkestra_outcome="fail}ure", x=~'y'}[$__rate_interval]))
             / on (job) group_left (instance) sum without (le) (b_seconds_bucket offset 5m)
             and bool count_over_time(c:recorded[1h:1m]) > 0.05 or histogram_quantile(0.99, d) # e
             unless ${var} > 1e3"#,
    )
    .unwrap();
    assert_eq!(
        names,
        ["a_total", "b_seconds_bucket", "c:recorded", "d"]
            .map(String::from)
            .into()
    );
    let reads = promql::reads(
        r#"sum by (job, h) (rate(a_total{o="x", p!~"y"}[5m])) / on (job) group_left (i) b"#,
    )
    .unwrap();
    assert_eq!(
        reads.matchers,
        vec![(Some("a_total".into()), vec!["o".into(), "p".into()])]
    );
    assert_eq!(reads.grouping, ["h", "i", "job"].map(String::from).into());
    assert!(promql::metric_names("rate(a[5m]").unwrap().contains("a"));
    assert!(
        promql::metric_names("a{b=\"c}").is_err(),
        "an unterminated string is an error"
    );
    assert!(
        promql::metric_names("rate(a[5m)").is_err(),
        "an unclosed range is an error"
    );
}

#[test]
fn the_exported_names_follow_the_instrument_table() {
    // The contract's instruments, as OpenTelemetry names them, with kind and unit.
    let instruments = [
        ("messaging.client.sent.messages", Kind::Counter, "{message}"),
        (
            "messaging.client.consumed.messages",
            Kind::Counter,
            "{message}",
        ),
        ("messaging.process.duration", Kind::Histogram, "s"),
        ("messaging.client.operation.duration", Kind::Histogram, "s"),
        ("orkestra.handler.retries", Kind::Counter, "{retry}"),
        ("orkestra.dead_letters", Kind::Counter, "{message}"),
        ("orkestra.inbox.skipped", Kind::Counter, "{message}"),
        ("orkestra.bus.in_flight", Kind::Gauge, "{message}"),
        ("orkestra.bus.reconnects", Kind::Counter, "{reconnect}"),
        ("orkestra.store.append.duration", Kind::Histogram, "s"),
        ("orkestra.aggregate.conflicts", Kind::Counter, "{conflict}"),
        ("orkestra.runner.lag", Kind::Gauge, "{event}"),
        ("orkestra.runner.lag.age", Kind::Gauge, "s"),
        ("orkestra.runner.owned", Kind::Gauge, "{partition}"),
        ("orkestra.process.timers.pending", Kind::Gauge, "{timer}"),
        ("orkestra.process.timer.lateness", Kind::Histogram, "s"),
    ];
    let translated: Vec<(String, Kind)> = instruments
        .iter()
        .map(|&(name, kind, unit)| {
            let mut prom = name.replace('.', "_");
            if unit == "s" {
                prom.push_str("_seconds");
            }
            if kind == Kind::Counter {
                prom.push_str("_total");
            }
            (prom, kind)
        })
        .collect();
    let exported: Vec<(String, Kind)> = EXPORTED
        .iter()
        .map(|&(n, k, _)| (n.to_owned(), k))
        .collect();
    assert_eq!(exported, translated);
    assert_eq!(
        family_of("orkestra_store_append_duration_seconds_bucket"),
        Some("orkestra_store_append_duration_seconds")
    );
    assert_eq!(
        family_of("orkestra_runner_lag"),
        Some("orkestra_runner_lag")
    );
    assert_eq!(family_of("orkestra_runner_lag_bucket"), None);
}

#[test]
fn alert_rules_cover_the_conditions_and_say_what_to_do() {
    let rules = rules();
    // A recording rule's series carry the labels it keeps (`by (..)`).
    let recorded: BTreeMap<String, BTreeSet<String>> = rules
        .iter()
        .filter_map(|r| {
            let reads = promql::reads(&r.expr).ok()?;
            Some((r.record.clone()?, reads.grouping))
        })
        .collect();
    let mut alerts = BTreeSet::new();
    for rule in &rules {
        match (&rule.alert, &rule.record) {
            (Some(alert), None) => {
                assert!(alerts.insert(alert.clone()), "{alert} twice");
                let severity = rule.labels.get("severity").map(String::as_str);
                assert!(
                    matches!(severity, Some("warning" | "critical")),
                    "{alert}: severity {severity:?}"
                );
                assert!(rule.for_.is_some(), "{alert} has no `for`");
                for key in ["summary", "description"] {
                    let text = rule
                        .annotations
                        .get(key)
                        .map(String::as_str)
                        .unwrap_or_default();
                    assert!(
                        text.contains("{{ $labels."),
                        "{alert}: its {key} should name what it is about (handler, worker or copy): {text:?}"
                    );
                }
                check_names(alert, &rule.expr, &recorded);
            }
            (None, Some(record)) => {
                check_names(record, &rule.expr, &BTreeMap::new());
            }
            _ => panic!("a rule is either an alert or a recording rule: {rule:?}"),
        }
    }
    let expected: BTreeSet<String> = ALERTS.iter().map(|a| a.to_string()).collect();
    assert_eq!(alerts, expected);
}

#[test]
fn alert_rules_have_firing_and_quiet_cases() {
    let path = ops().join("prometheus/alerts.test.yml");
    let file: RuleTests =
        serde_saphyr::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in &file.tests {
        assert!(
            !test.alert_rule_test.is_empty(),
            "test {:?} checks no alert",
            test.name
        );
        for case in &test.alert_rule_test {
            if case.exp_alerts.is_empty() {
                quiet.insert(case.alertname.as_str());
            } else {
                firing.insert(case.alertname.as_str());
            }
        }
    }
    for alert in ALERTS {
        assert!(firing.contains(alert), "{alert} has no case where it fires");
        assert!(
            quiet.contains(alert),
            "{alert} has no case where it stays quiet"
        );
    }
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    if !prometheus::installed("promtool") {
        return;
    }
    let rules = ops().join("prometheus/alerts.yml");
    let out = prometheus::promtool(&["check", "rules", &rules.display().to_string()], None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = ops().join("prometheus/alerts.test.yml");
    let out = prometheus::promtool(&["test", "rules", &tests.display().to_string()], None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("SUCCESS"), "{out}");
}

fn dashboard() -> Value {
    let path = ops().join("grafana/orkestra.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel of the dashboard, inside rows too.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"]
        .as_array()
        .expect("`panels` is an array")
    {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            out.push(panel);
        }
    }
    out
}

/// Every query of the dashboard: panel title and PromQL.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| {
                    (
                        title.clone(),
                        t["expr"].as_str().unwrap_or_default().to_owned(),
                    )
                })
        })
        .collect()
}

#[test]
fn the_dashboard_shows_every_instrument_through_a_prometheus_data_source() {
    let dashboard = dashboard();
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "no Prometheus data source variable named `datasource`: {variables:?}"
    );
    // `label_values(SELECTOR, LABEL)` variables read exported metrics too.
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let definition = variable["definition"].as_str().unwrap_or_default();
        let selector = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _)| selector)
            .unwrap_or_else(|| panic!("variable {}: {definition:?}", variable["name"]));
        check_names(
            &format!("variable {}", variable["name"]),
            selector,
            &BTreeMap::new(),
        );
    }
    let panels = panels(&dashboard);
    assert!(!panels.is_empty());
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a numeric id")),
            "id of {title} twice"
        );
        assert!(
            panel["gridPos"]["w"].as_u64().is_some(),
            "{title} has no place on the grid"
        );
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}'s data source"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} queries nothing");
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{title}'s query's data source"
            );
        }
    }
    // Every instrument on some panel; histograms as their median and 99th percentile.
    let mut read = BTreeSet::new();
    for (title, expr) in queries(&dashboard) {
        for name in check_names(&title, &expr, &BTreeMap::new()) {
            read.insert(family_of(&name).expect("checked above"));
        }
    }
    for &(family, kind, _) in EXPORTED {
        assert!(read.contains(family), "no panel shows {family}");
        if kind == Kind::Histogram {
            for q in ["0.5", "0.99"] {
                let quantile = format!("histogram_quantile({q}, sum by (le");
                assert!(
                    queries(&dashboard)
                        .iter()
                        .any(|(_, e)| e.contains(&quantile)
                            && e.contains(&format!("{family}_bucket"))),
                    "no panel shows {family}'s {q} quantile"
                );
            }
        }
    }
}

#[test]
fn promtool_parses_every_dashboard_query() {
    if !prometheus::installed("promtool") {
        return;
    }
    // Each query as a recording rule, Grafana's variables given values.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in queries(&dashboard()).into_iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*")
            .replace("$handler", ".*");
        rules.push_str(&format!(
            "      # {title}\n      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let path = std::env::temp_dir().join(format!(
        "orkestra-dashboard-{}.yml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, &rules).unwrap();
    let result = prometheus::promtool(&["check", "rules", &path.display().to_string()], None);
    let _ = std::fs::remove_file(&path);
    let out = result.unwrap_or_else(|e| panic!("{e}\n{rules}"));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// What the test service's `PlaceOrderHandler` does with an order, by its quantity.
const SUCCEED: i64 = 1;
/// Fails its first run, succeeds when retried.
const FAIL_ONCE: i64 = 2;
/// Fails every run: dead-lettered once its retries are spent.
const FAIL_ALWAYS: i64 = 3;
/// Refuses it (a business rejection: neither retried nor dead-lettered).
const REJECT: i64 = 4;

/// Retries of every command the test dispatches.
const MAX_RETRIES: u32 = 2;

/// The test service's command handler: its behaviour chosen by the order's quantity.
#[derive(Default)]
struct Scripted {
    runs: std::sync::Mutex<BTreeMap<String, u32>>,
}

impl orkestra_tests::orders::handlers::PlaceOrderHandler for Scripted {
    async fn execute(
        &self,
        cmd: Command<PlaceOrder>,
        _: HandlerContext,
    ) -> Result<Value, HandlerError> {
        let run = {
            let mut runs = self.runs.lock().unwrap();
            let run = runs.entry(cmd.id.clone()).or_default();
            *run += 1;
            *run
        };
        match cmd.quantity {
            SUCCEED => Ok(json!({"ok": true})),
            FAIL_ONCE if run > 1 => Ok(json!({"ok": true})),
            FAIL_ONCE | FAIL_ALWAYS => Err(HandlerError::fail("the warehouse is down")),
            REJECT => Err(HandlerError::reject("out of stock")),
            other => Err(HandlerError::reject(format!(
                "no script for quantity {other}"
            ))),
        }
    }
}

/// Dispatches `count` orders of `quantity` and checks each ends as expected.
async fn dispatch(bus: &Bus, quantity: i64, count: usize) {
    for _ in 0..count {
        let cmd = PlaceOrder::new(
            json!({"product_id": "sku", "quantity": quantity}),
            Metadata::new(),
        )
        .unwrap();
        let receipt = bus
            .dispatch(CommandEnvelope::wrap(cmd).max_retries(MAX_RETRIES))
            .await
            .unwrap();
        let expected = match quantity {
            SUCCEED | FAIL_ONCE => CommandStatus::Succeeded,
            FAIL_ALWAYS => CommandStatus::Failed,
            _ => CommandStatus::Rejected,
        };
        assert_eq!(receipt.status(), expected, "quantity {quantity}");
    }
}

/// How many orders of each kind the service handles, in two rounds with a scrape
/// between them (so every series has grown between two samples, which `rate()` and
/// the alert rules need).
const ROUNDS: [[(i64, usize); 4]; 2] = [
    [(SUCCEED, 3), (FAIL_ONCE, 1), (FAIL_ALWAYS, 1), (REJECT, 1)],
    [(SUCCEED, 17), (FAIL_ONCE, 4), (FAIL_ALWAYS, 2), (REJECT, 3)],
];

fn total(quantity: i64) -> f64 {
    ROUNDS
        .iter()
        .flatten()
        .filter(|(q, _)| *q == quantity)
        .map(|(_, n)| *n as f64)
        .sum()
}

#[test]
fn prometheus_scrapes_the_counts_a_service_produced() {
    if !prometheus::installed("promtool") {
        return;
    }
    const JOB: &str = "orkestra-test";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    // The meter provider first, then the bus: a bus takes its instruments when built.
    let telemetry = Telemetry::new("orders")
        .serve("127.0.0.1:0")
        .init_metrics()
        .unwrap();
    let target = telemetry.metrics_addr().expect("serving /metrics");
    let bus = Bus::in_process();
    runtime
        .block_on(bus.subscribe(place_order_handler(Scripted::default())))
        .unwrap();

    let rules = ops().join("prometheus/alerts.yml");
    let Some(server) = Prometheus::start(JOB, target, &[&rules]).unwrap_or_else(|e| panic!("{e}"))
    else {
        return;
    };
    let wait = |since| {
        server
            .wait_for_scrape_after(JOB, since, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // Scraped once before any message: every series then appears while Prometheus
    // watches, as in a service that has been running for a while.
    wait(SystemTime::now());
    for round in ROUNDS {
        for (quantity, count) in round {
            runtime.block_on(dispatch(&bus, quantity, count));
        }
        wait(SystemTime::now());
    }

    let handler = r#"job="orkestra-test", orkestra_handler="PlaceOrderHandler""#;
    let value = |promql: &str| {
        server
            .value(promql)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| {
                let exposition = prometheus::http_get(target, "/metrics").map(|(_, body)| body);
                let held = server.query(&format!(r#"count by (__name__) ({{job="{JOB}"}})"#));
                panic!("no sample for {promql}; Prometheus holds {held:?}; the service exports:\n{exposition:?}")
            })
    };
    let (succeed, fail_once, fail_always, reject) = (
        total(SUCCEED),
        total(FAIL_ONCE),
        total(FAIL_ALWAYS),
        total(REJECT),
    );
    let runs = |outcome: &str| {
        value(&format!(
            r#"sum(messaging_process_duration_seconds_count{{{handler}, orkestra_outcome="{outcome}"}})"#
        ))
    };
    let attempts = f64::from(MAX_RETRIES + 1);
    assert_eq!(runs("success"), succeed + fail_once);
    assert_eq!(runs("failure"), fail_once + fail_always * attempts);
    assert_eq!(runs("rejected"), reject);
    assert_eq!(
        value(&format!("sum(orkestra_handler_retries_total{{{handler}}})")),
        fail_once + fail_always * f64::from(MAX_RETRIES)
    );
    assert_eq!(
        value(&format!(
            r#"sum(orkestra_dead_letters_total{{{handler}, orkestra_dead_letter_reason="exhausted"}})"#
        )),
        fail_always
    );
    let dispatched = succeed + fail_once + fail_always + reject;
    assert_eq!(
        value(&format!(
            r#"sum(messaging_client_sent_messages_total{{job="{JOB}", messaging_destination_name="{}"}})"#,
            PlaceOrder::TOPIC
        )),
        dispatched
    );
    // Every attempt hands the message to the handler again.
    assert_eq!(
        value(&format!(
            "sum(messaging_client_consumed_messages_total{{{handler}}})"
        )),
        succeed + fail_once * 2.0 + fail_always * attempts + reject
    );
    assert_eq!(
        value(&format!("sum(orkestra_bus_in_flight{{{handler}}})")),
        0.0
    );
    // The failure ratio over the two rounds, as the alert rule computes it.
    let ratio = value(&format!(
        r#"sum(increase(messaging_process_duration_seconds_count{{{handler}, orkestra_outcome="failure"}}[1h])) / sum(increase(messaging_process_duration_seconds_count{{{handler}}}[1h]))"#
    ));
    assert!(ratio > 0.05, "failure ratio {ratio}");

    // Every series the service exports is one the rules and the dashboard may read,
    // with only the labels listed for it.
    let series = server
        .query(&format!(
            r#"{{job="{JOB}", __name__=~"orkestra_.+|messaging_.+"}}"#
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!series.is_empty());
    for sample in &series {
        let name = &sample.labels["__name__"];
        let allowed = exported::labels_of(name);
        assert!(
            !allowed.is_empty(),
            "{name} is exported but not in EXPORTED"
        );
        for label in sample.labels.keys().filter(|l| *l != "__name__") {
            assert!(
                allowed.contains(&label.as_str()),
                "{name} carries `{label}`, not listed in EXPORTED ({allowed:?})"
            );
        }
    }

    // The alert rules see it: the dead letters at once, the failure ratio pending for
    // its five minutes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = [
        ("OrkestraDeadLetters", "pending"),
        ("OrkestraHandlerFailing", "pending"),
    ];
    loop {
        let alerts = server.alerts().unwrap_or_else(|e| panic!("{e}"));
        let seen = |(name, state): (&str, &str)| {
            alerts.iter().any(|a| {
                a.get("alertname").map(String::as_str) == Some(name)
                    && a.get("alertstate").map(String::as_str) == Some(state)
                    && a.get("orkestra_handler").map(String::as_str) == Some("PlaceOrderHandler")
            })
        };
        if wanted.into_iter().all(seen) {
            assert!(
                !alerts
                    .iter()
                    .any(|a| a["alertname"] == "OrkestraBusReconnecting"
                        || a["alertname"] == "OrkestraPartitionUnheld"),
                "{alerts:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alerts {alerts:?}, wanted {wanted:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The exposition itself passes promtool's checks.
    let (status, body) = prometheus::http_get(target, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    prometheus::promtool(&["check", "metrics"], Some(body.as_bytes()))
        .unwrap_or_else(|e| panic!("{e}\n{body}"));
    drop(server);
    drop(telemetry);
}
