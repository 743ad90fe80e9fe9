//! The alerts WebSocket with many clients: memory per connected client and the time to
//! fan one alert out to all of them.
//!
//! `cargo bench -p fleetwatch --bench ws_fanout [-- CLIENTS ALERTS]` (default 10000 20).
//! The server (the alerts role's WebSocket server and its per-tenant broadcast, as the
//! role runs them, fed directly instead of from Kafka) runs in this process; the clients
//! run in a child process (this binary again, `--clients ADDR N ALERTS`), so the
//! server's memory is measured alone: bytes held on its heap (a counting allocator) and
//! its resident set, before and after the clients connect. Each alert's fan-out time runs
//! from its publish (server) to the moment the last client received it (child); both
//! read the same wall clock.
//!
//! Each process holds one socket per client: CLIENTS must stay below the open-file limit
//! (`ulimit -n`), raised here to the hard limit.

#[path = "common/counting.rs"]
mod counting;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use counting::{resident_bytes, Counting, HELD};
use fleetwatch::alerts::{serve, AlertFrame, RecentAlerts, Routes, Server};
use fleetwatch::auth::{AuthConfig, AuthMode, Authenticator};
use fleetwatch::metrics::Metrics;
use fleetwatch_protocol::DeviceId;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn now_us() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    since.map_or(0, |d| d.as_micros() as u64)
}

fn main() {
    raise_open_file_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if args.first().map(String::as_str) == Some("--clients") {
        let number = |i: usize| args[i].parse::<usize>().expect("a number");
        runtime.block_on(clients(&args[1], number(2), number(3)));
        return;
    }
    let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let clients = numbers.first().copied().unwrap_or(10_000);
    let alerts = numbers.get(1).copied().unwrap_or(20);
    runtime.block_on(server(clients, alerts));
}

/// Raise the soft open-file limit to the hard one (one socket per client).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn server(clients: usize, alerts: usize) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new());
    let routes = Arc::new(Routes::new(1024));
    let auth = AuthConfig {
        mode: Some(AuthMode::None),
        ..Default::default()
    };
    let server = Server {
        alarms: None,
        routes: routes.clone(),
        recent: RecentAlerts::default(),
        auth: Arc::new(Authenticator::new(&auth).unwrap()),
        tls: None,
        max_clients: clients + 16,
        metrics: metrics.clone(),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, server, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (heap_before, rss_before) = (HELD.load(Ordering::Relaxed), resident_bytes());

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--clients", &address.to_string()])
        .args([clients.to_string(), alerts.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the client process starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(ready, "ready", "the clients connected");
    while metrics.ws_clients.get() < clients as i64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heap = HELD.load(Ordering::Relaxed).saturating_sub(heap_before);
    let rss = resident_bytes().saturating_sub(rss_before);

    let mut fanouts_ms = Vec::with_capacity(alerts);
    for i in 0..alerts {
        let published = now_us();
        routes.publish(alert_frame(i));
        let line = lines
            .next()
            .and_then(Result::ok)
            .expect("the child reports");
        let received: u64 = line
            .strip_prefix(&format!("{i} "))
            .and_then(|t| t.parse().ok())
            .expect("`alert last_receipt_us`");
        fanouts_ms.push(received.saturating_sub(published) as f64 / 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    let _ = child.wait();
    report(clients, connect_s, heap, rss, &mut fanouts_ms, &metrics);
}

fn alert_frame(i: usize) -> AlertFrame {
    let text: Arc<str> = serde_json::json!({
        "type": "alert",
        "alert": {"alert_id": format!("bench:{i}"), "device_id": "bench-device", "state": "raised",
                  "score": 0.97, "threshold": 0.65, "reason": "temperature 80.0 is far above its usual 21.0"}
    })
    .to_string()
    .into();
    AlertFrame {
        device_id: Some(DeviceId::parse("bench-device").unwrap()),
        tenant: None,
        text: text.clone(),
        recent_text: text,
        position: None,
    }
}

fn report(
    clients: usize,
    connect_s: f64,
    heap: usize,
    rss: usize,
    fanouts_ms: &mut [f64],
    metrics: &Metrics,
) {
    fanouts_ms.sort_by(f64::total_cmp);
    let at = |q: f64| fanouts_ms[((fanouts_ms.len() - 1) as f64 * q).round() as usize];
    println!("ws_fanout: {clients} clients connected in {connect_s:.2} s");
    println!(
        "  server memory per client: heap {:.1} KB, resident set {:.1} KB",
        heap as f64 / clients as f64 / 1024.0,
        rss as f64 / clients as f64 / 1024.0
    );
    println!(
        "  fan-out of one alert to every client ({} alerts): p50 {:.1} ms, max {:.1} ms",
        fanouts_ms.len(),
        at(0.5),
        at(1.0)
    );
    println!(
        "  frames sent {}, dropped for slow clients {}",
        metrics.ws_alerts_sent.get(),
        metrics.ws_alerts_dropped.get()
    );
}

/// The child: `clients` WebSocket clients of `address`; prints `ready` once all are
/// connected, then for each alert `INDEX LAST_RECEIPT_US` once every client has it.
async fn clients(address: &str, clients: usize, alerts: usize) {
    let url = format!("ws://{address}/");
    let received: Arc<Vec<AtomicUsize>> = Arc::new((0..alerts).map(|_| 0.into()).collect());
    let mut sockets = Vec::with_capacity(clients);
    for batch in (0..clients).collect::<Vec<_>>().chunks(200) {
        let connecting = batch.iter().map(|_| tokio_tungstenite::connect_async(&url));
        for connected in futures::future::join_all(connecting).await {
            sockets.push(connected.expect("a client connects").0);
        }
    }
    println!("ready");
    let mut tasks = Vec::with_capacity(clients);
    for mut socket in sockets {
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                let Some(index) = alert_index(&message) else {
                    continue;
                };
                let Some(count) = received.get(index) else {
                    continue;
                };
                if count.fetch_add(1, Ordering::AcqRel) + 1 == clients {
                    println!("{index} {}", now_us());
                }
                if index + 1 == received.len() {
                    break;
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

fn alert_index(message: &tokio_tungstenite::tungstenite::Message) -> Option<usize> {
    let text = message.to_text().ok()?;
    let start = text.find("bench:")? + "bench:".len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}
