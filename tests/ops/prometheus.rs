//! Debian's Prometheus for the tests: `promtool`, and a real server started on a free
//! port with a configuration and a data directory of its own (never the system service
//! the package may run on 9090), queried through its HTTP API and killed when dropped.
//! Missing binaries skip a test with a message, unless `ORKESTRA_REQUIRE_SERVICES=1`
//! (as `.ci/run`, which installs the package, sets): then they fail it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::services;

/// How long the server may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `true` when `program --version` runs; otherwise reports it (a skip, or a failure
/// when services are required) and returns `false`.
pub fn installed(program: &str) -> bool {
    match Command::new(program).arg("--version").output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            services::unavailable(
                program,
                &format!("`{program} --version` exited with {}", out.status),
            );
            false
        }
        Err(e) => {
            services::unavailable(
                program,
                &format!("{e}; install it with `apt-get install -y prometheus` (as .ci/run does)"),
            );
            false
        }
    }
}

/// Runs `promtool ARGS` (with `stdin` fed in when given): `Err` with its output unless
/// it exited 0.
pub fn promtool(args: &[&str], stdin: Option<&[u8]>) -> Result<String, String> {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool {args:?} did not start: {e}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input)
            .map_err(|e| format!("promtool {args:?}: writing its input: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool {args:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "promtool {args:?} exited with {}:\n{text}",
            out.status
        ))
    }
}

/// A GET over HTTP/1.0 (so the answer is never chunked and ends with the connection):
/// the status code and the body.
pub fn http_get(address: SocketAddr, path_and_query: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .map_err(|e| format!("GET http://{address}{path_and_query}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {address}\r\n\r\n"
    )
    .map_err(|e| format!("GET http://{address}{path_and_query}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("GET http://{address}{path_and_query}: {e}"))?;
    let answer = String::from_utf8(answer)
        .map_err(|e| format!("GET http://{address}{path_and_query}: not UTF-8: {e}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| {
        format!("GET http://{address}{path_and_query}: no header end in {answer:?}")
    })?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            format!("GET http://{address}{path_and_query}: bad status line in {head:?}")
        })?;
    Ok((status, body.to_owned()))
}

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A free port on the loopback interface, as the kernel hands out.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// One sample of an instant vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A Prometheus server of the test's own.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    address: SocketAddr,
}

impl Prometheus {
    /// Starts `prometheus` scraping `target` as job `job` every second and evaluating
    /// `rule_files` every second. `Ok(None)` after the skip notice when it is not
    /// installed.
    pub fn start(
        job: &str,
        target: SocketAddr,
        rule_files: &[&Path],
    ) -> Result<Option<Self>, String> {
        if !installed("prometheus") {
            return Ok(None);
        }
        let dir = std::env::temp_dir().join(format!(
            "orkestra-prometheus-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("data")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let rules: String = rule_files
            .iter()
            .map(|f| format!("  - {:?}\n", f.display().to_string()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rules}\
             scrape_configs:\n  - job_name: {job:?}\n    static_configs:\n      - targets: [{:?}]\n",
            target.to_string()
        );
        std::fs::write(dir.join("prometheus.yml"), config).map_err(|e| e.to_string())?;
        // A port taken between `free_port` and the server's bind: try another.
        let mut last = String::new();
        for _ in 0..3 {
            let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let mut child = spawn(&dir, address)?;
            match wait_ready(&mut child, address, &dir) {
                Ok(()) => {
                    return Ok(Some(Prometheus {
                        child,
                        dir,
                        address,
                    }));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = e;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last)
    }

    /// The end of the server's log, to explain a failure.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir)
    }

    /// The `data` of a successful answer of the HTTP API at `path_and_query`.
    fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let (status, body) = http_get(self.address, path_and_query)?;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|e| format!("{path_and_query}: {status} {body:?}: {e}"))?;
        if status != 200 || answer["status"] != "success" {
            return Err(format!("{path_and_query}: {status} {answer}"));
        }
        Ok(answer["data"].clone())
    }

    /// Evaluates `promql` now (`/api/v1/query`): the samples of the instant vector.
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        if data["resultType"] != "vector" {
            return Err(format!(
                "{promql}: a {} rather than a vector",
                data["resultType"]
            ));
        }
        let mut samples = Vec::new();
        for item in data["result"].as_array().into_iter().flatten() {
            let labels = item["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value = item["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{promql}: no value in {item}"))?;
            samples.push(Sample { labels, value });
        }
        Ok(samples)
    }

    /// The value of `promql`, which must be one sample (or none: `None`).
    pub fn value(&self, promql: &str) -> Result<Option<f64>, String> {
        let samples = self.query(promql)?;
        match samples.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.value)),
            many => Err(format!(
                "{promql}: {} samples rather than one: {many:?}",
                many.len()
            )),
        }
    }

    /// Waits until a successful scrape of `job` happened after `after`, so a query
    /// sees everything the target had counted by then.
    pub fn wait_for_scrape_after(
        &self,
        job: &str,
        after: SystemTime,
        timeout: Duration,
    ) -> Result<(), String> {
        let after = after
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs_f64();
        let deadline = Instant::now() + timeout;
        // `timestamp()` gives a sample's own time only when it reads a selector directly
        // (`timestamp(up == 1)` would be the evaluation's time).
        let query = format!("timestamp(up{{job={job:?}}}) and up{{job={job:?}}} == 1");
        loop {
            if let Some(at) = self.value(&query)?
                && at > after
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no successful scrape of {job} within {timeout:?}; targets: {}\n{}",
                    self.api("/api/v1/targets")
                        .map(|t| t.to_string())
                        .unwrap_or_else(|e| e),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The alerts the server's rules hold now (pending or firing): their labels, each
    /// with `alertstate` added.
    pub fn alerts(&self) -> Result<Vec<BTreeMap<String, String>>, String> {
        let data = self.api("/api/v1/alerts")?;
        Ok(data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|alert| {
                let mut labels: BTreeMap<String, String> = alert["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                labels.insert(
                    "alertstate".into(),
                    alert["state"].as_str().unwrap_or_default().to_owned(),
                );
                labels
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(dir: &Path, address: SocketAddr) -> Result<Child, String> {
    let log = std::fs::File::create(dir.join("prometheus.log")).map_err(|e| e.to_string())?;
    Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={address}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("prometheus did not start: {e}"))
}

fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn wait_ready(child: &mut Child, address: SocketAddr, dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "prometheus exited with {status}:\n{}",
                log_tail(dir)
            ));
        }
        if let Ok((200, _)) = http_get(address, "/-/ready") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "prometheus was not ready within {START_TIMEOUT:?}:\n{}",
                log_tail(dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
