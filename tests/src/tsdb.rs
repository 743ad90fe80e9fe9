//! The time-series side of the end-to-end tests: the VictoriaMetrics and Prometheus
//! servers `scripts/test` started (or a VictoriaMetrics a test runs itself), their query
//! APIs, and the dashboards' panel queries with Grafana's variables filled in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http_get;

/// Where the time-series servers are, from the variables `scripts/test` exports.
#[derive(Clone, Debug)]
pub struct TsdbRig {
    /// VictoriaMetrics, started with `-dedup.minScrapeInterval=1ms`.
    pub tsdb: SocketAddr,
    pub prometheus: SocketAddr,
    /// Prometheus reads scrape targets from JSON files in this folder (file_sd).
    pub targets_dir: PathBuf,
    /// The VictoriaMetrics binary, for tests that run (and stop) their own.
    pub victoria_metrics_bin: String,
    /// Scratch space for such servers' data.
    pub scratch: PathBuf,
}

fn address(variable: &str) -> SocketAddr {
    let url = std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: the end-to-end tests run through scripts/test")
    });
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{variable}={url}: {e}"))
}

impl TsdbRig {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
        Self {
            tsdb: address("FLEETWATCH_TEST_TSDB_URL"),
            prometheus: address("FLEETWATCH_TEST_PROMETHEUS_URL"),
            targets_dir: var("FLEETWATCH_TEST_PROMETHEUS_TARGETS").into(),
            victoria_metrics_bin: var("FLEETWATCH_TEST_VICTORIA_METRICS"),
            scratch: var("FLEETWATCH_TEST_SCRATCH").into(),
        }
    }

    /// Have Prometheus scrape `service` (its `/metrics`) as `name`; removed on drop.
    pub fn scrape(&self, name: &str, service: SocketAddr) -> ScrapeTarget {
        let path = self.targets_dir.join(format!("{name}.json"));
        let targets =
            serde_json::json!([{ "targets": [service.to_string()], "labels": { "test": name } }]);
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, targets.to_string()).unwrap();
        std::fs::rename(&temporary, &path).unwrap();
        ScrapeTarget { path }
    }
}

pub struct ScrapeTarget {
    path: PathBuf,
}

impl Drop for ScrapeTarget {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Percent-encode a query parameter.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// GET a Prometheus-API path and return `data`; panics on anything but success.
pub fn api(server: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(server, path).unwrap_or_else(|e| panic!("{server}{path}: {e}"));
    let answer: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{server}{path}: {status} {body}: {e}"));
    assert_eq!(answer["status"], "success", "{server}{path}: {body}");
    answer["data"].clone()
}

/// An instant query at `at` (seconds): the result vector.
pub fn query(server: SocketAddr, expr: &str, at: f64) -> Vec<Value> {
    let data = api(
        server,
        &format!("/api/v1/query?query={}&time={at}", encode(expr)),
    );
    data["result"].as_array().cloned().unwrap_or_default()
}

/// A range query: the result matrix.
pub fn query_range(server: SocketAddr, expr: &str, start: f64, end: f64, step: u64) -> Vec<Value> {
    let path = format!(
        "/api/v1/query_range?query={}&start={start}&end={end}&step={step}",
        encode(expr)
    );
    api(server, &path)["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Values of `label` among the series `selector` matches.
pub fn label_values(server: SocketAddr, selector: &str, label: &str) -> Vec<String> {
    let path = format!("/api/v1/label/{label}/values?match[]={}", encode(selector));
    let values = api(server, &path);
    (values.as_array().into_iter().flatten())
        .filter_map(|value| value.as_str().map(str::to_owned))
        .collect()
}

/// The largest sample of a query result (vector or matrix), if any.
pub fn largest_sample(result: &[Value]) -> Option<f64> {
    let samples = result.iter().flat_map(|series| {
        let single = series.get("value").into_iter();
        let many = series["values"].as_array().into_iter().flatten();
        single
            .chain(many)
            .filter_map(|pair| pair[1].as_str()?.parse::<f64>().ok())
    });
    samples.fold(None, |largest: Option<f64>, v| {
        Some(largest.map_or(v, |l| l.max(v)))
    })
}

/// One query of a dashboard: a panel target or an annotation.
#[derive(Clone, Debug)]
pub struct DashboardQuery {
    pub dashboard: String,
    /// The panel title (or `annotation: <name>`), variables not yet filled in.
    pub title: String,
    pub datasource: String,
    pub expr: String,
    pub instant: bool,
    /// Repeated for each value of this variable (a repeated row or panel).
    pub repeat: Option<String>,
}

/// Every panel target and annotation query of every dashboard JSON in `dir`.
pub fn dashboard_queries(dir: &Path) -> Vec<DashboardQuery> {
    let mut queries = Vec::new();
    for path in dashboard_files(dir) {
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = dashboard["uid"].as_str().unwrap().to_owned();
        let mut repeat = None;
        for panel in dashboard["panels"].as_array().unwrap() {
            if panel["type"] == "row" {
                repeat = panel["repeat"].as_str().map(str::to_owned);
                continue;
            }
            let repeat = panel["repeat"]
                .as_str()
                .map(str::to_owned)
                .or(repeat.clone());
            for target in panel["targets"].as_array().into_iter().flatten() {
                queries.push(DashboardQuery {
                    dashboard: name.clone(),
                    title: panel["title"].as_str().unwrap_or_default().to_owned(),
                    datasource: uid(&target["datasource"])
                        .or_else(|| uid(&panel["datasource"]))
                        .unwrap_or_default(),
                    expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                    instant: target["instant"] == true,
                    repeat: repeat.clone(),
                });
            }
        }
        for annotation in dashboard["annotations"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            queries.push(DashboardQuery {
                dashboard: name.clone(),
                title: format!(
                    "annotation: {}",
                    annotation["name"].as_str().unwrap_or_default()
                ),
                datasource: uid(&annotation["datasource"]).unwrap_or_default(),
                expr: annotation["expr"].as_str().unwrap_or_default().to_owned(),
                instant: false,
                repeat: None,
            });
        }
    }
    queries
}

fn uid(datasource: &Value) -> Option<String> {
    datasource["uid"].as_str().map(str::to_owned)
}

/// The dashboard JSON files of `dir`, sorted.
pub fn dashboard_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

/// Fill Grafana's variables: the dashboard's own (`vars`) and the built-in intervals.
pub fn fill(expr: &str, vars: &BTreeMap<String, String>, range_secs: u64) -> String {
    let mut filled = expr
        .replace("$__rate_interval", "30s")
        .replace("$__interval", "5s")
        .replace("$__range", &format!("{range_secs}s"));
    for (name, value) in vars {
        filled = filled
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    filled
}

/// A VictoriaMetrics a test runs itself (so it can stop it), deduplicating as the docs say.
pub struct OwnTsdb {
    child: Option<Child>,
    pub address: SocketAddr,
    bin: String,
    data: PathBuf,
}

impl OwnTsdb {
    pub fn start(bin: &str, data: PathBuf) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut tsdb = Self {
            child: None,
            address: format!("127.0.0.1:{port}").parse().unwrap(),
            bin: bin.to_owned(),
            data,
        };
        tsdb.restart();
        tsdb
    }

    /// Start (again) on the same port and data.
    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.data.with_extension("log")).unwrap();
        let child = Command::new(&self.bin)
            .arg(format!("-httpListenAddr={}", self.address))
            .arg(format!("-storageDataPath={}", self.data.display()))
            .args(["-retentionPeriod=1d", "-dedup.minScrapeInterval=1ms"])
            .args(["-search.latencyOffset=0s", "-search.disableCache"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("victoria-metrics starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(self.address, "/health").map(|(s, _)| s).ok() != Some(200) {
            assert!(
                Instant::now() < deadline,
                "victoria-metrics did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop it (SIGTERM: it flushes what it has) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for OwnTsdb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Make what VictoriaMetrics received queryable now.
pub fn force_flush(tsdb: SocketAddr) {
    let _ = http_get(tsdb, "/internal/force_flush");
}

/// Stored samples of every `fleetwatch_telemetry_*` series whose device starts with
/// `prefix`: (device, metric) → count.
pub fn stored_readings(tsdb: SocketAddr, prefix: &str) -> BTreeMap<(String, String), u64> {
    force_flush(tsdb);
    let now = fleetwatch_protocol::now_ms() as f64 / 1000.0 + 60.0;
    let devices = format!(r#"device=~"{}.*""#, prefix.replace('.', "\\\\."));
    let names = label_values(
        tsdb,
        &format!(r#"{{__name__=~"fleetwatch_telemetry_.+", {devices}}}"#),
        "__name__",
    );
    let mut counts = BTreeMap::new();
    for name in names {
        let metric = name.trim_start_matches("fleetwatch_telemetry_").to_owned();
        for series in query(
            tsdb,
            &format!("count_over_time({name}{{{devices}}}[1d])"),
            now,
        ) {
            let device = series["metric"]["device"].as_str().unwrap().to_owned();
            let count = series["value"][1].as_str().unwrap().parse::<f64>().unwrap() as u64;
            counts.insert((device, metric.clone()), count);
        }
    }
    counts
}

/// What reached `iot.telemetry` for devices starting with `prefix`: (device, metric) →
/// distinct readings (by device timestamp) with a finite value.
pub fn telemetry_readings(
    kafka: &str,
    topic: &str,
    prefix: &str,
) -> BTreeMap<(String, String), u64> {
    use fleetwatch_protocol::DeviceEventBody;
    let mut seen = std::collections::BTreeSet::new();
    for record in crate::read_topic(kafka, topic) {
        let Some(event) = record.device_event() else {
            continue;
        };
        let DeviceEventBody::Telemetry(telemetry) = event.body else {
            continue;
        };
        let device = event.device_id.as_str().to_owned();
        if !device.starts_with(prefix) {
            continue;
        }
        for (metric, _) in telemetry.metrics.iter().filter(|(_, v)| v.is_finite()) {
            seen.insert((device.clone(), metric.to_string(), telemetry.ts));
        }
    }
    let mut counts = BTreeMap::new();
    for (device, metric, _) in seen {
        *counts.entry((device, metric)).or_insert(0) += 1;
    }
    counts
}
