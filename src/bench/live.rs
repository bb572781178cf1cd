//! `brunnr bench --live`: fan-out to live sessions, brunnr against Nchan in the same run.
//!
//! For each scenario (1,000 subscribers on 100 keys; 10,000 subscribers on 10,000 keys) and each
//! transport (SSE, WebSocket), a fresh server process is started: `brunnr serve` (this binary) or
//! nginx with Nchan (`bench/nchan.conf`). Subscribers connect; the server's RSS before and after
//! gives the memory per idle session. Then publishers post one message per HTTP request, round
//! robin over the keys, as fast as the server takes them for `--seconds`; each subscriber counts
//! what it receives and the latency from the publish (the message carries its send time). The
//! server's CPU time (`/proc`, its process and children) over the phase, divided by deliveries,
//! is the CPU per delivery. Everything is on loopback and ends by itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::micros_now;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    Brunnr,
    Nchan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Sse,
    WebSocket,
}

/// A server under test, in its own process (so its CPU and memory can be read apart).
struct ServerUnderTest {
    kind: ServerKind,
    child: Child,
    port: u16,
    dir: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The Nchan config: `bench/nchan.conf` with its placeholders filled.
const NCHAN_CONF: &str = include_str!("../../bench/nchan.conf");

impl ServerUnderTest {
    async fn start(kind: ServerKind) -> anyhow::Result<ServerUnderTest> {
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("brunnr-live-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = match kind {
            ServerKind::Brunnr => Command::new(std::env::current_exe()?)
                .arg("serve")
                .env("BRUNNR_SERVER__LISTEN", format!("127.0.0.1:{port}"))
                .env("BRUNNR_STORE__PATH", dir.join("data"))
                .env("BRUNNR_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start brunnr serve")?,
            ServerKind::Nchan => {
                let conf = NCHAN_CONF
                    .replace("@PORT@", &port.to_string())
                    .replace("@PREFIX@", &dir.display().to_string());
                let path = dir.join("nginx.conf");
                std::fs::write(&path, conf)?;
                Command::new(nginx()?)
                    .arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&path)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("cannot start nginx")?
            }
        };
        let server = ServerUnderTest {
            kind,
            child,
            port,
            dir,
        };
        super::wait_listening(&format!("{kind:?}"), port).await?;
        Ok(server)
    }

    /// The server's process and its children (nginx's workers).
    fn pids(&self) -> Vec<u32> {
        let root = self.child.id();
        let mut pids = vec![root];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(root) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// CPU time used so far, in seconds (user + system, all processes).
    fn cpu_seconds(&self) -> f64 {
        // Fields after the command: state(0) ppid(1) … utime(11) stime(12), in clock ticks (100/s
        // on Linux).
        self.pids()
            .into_iter()
            .filter_map(stat_fields)
            .map(|f| {
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                (ticks(11) + ticks(12)) as f64 / 100.0
            })
            .sum()
    }

    /// Resident memory, in bytes, all processes.
    fn rss_bytes(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|status| {
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024)
            })
            .sum()
    }

    fn subscribe_url(&self, key: &str, transport: Transport) -> String {
        let scheme = match transport {
            Transport::Sse => "http",
            Transport::WebSocket => "ws",
        };
        match self.kind {
            ServerKind::Brunnr => format!("{scheme}://127.0.0.1:{}/v1/stream?key={key}", self.port),
            ServerKind::Nchan => format!("{scheme}://127.0.0.1:{}/sub/{key}", self.port),
        }
    }

    fn publish(&self, client: &reqwest::Client, key: &str) -> reqwest::RequestBuilder {
        let sent = micros_now();
        match self.kind {
            ServerKind::Brunnr => client
                .post(format!("http://127.0.0.1:{}/push_events", self.port))
                .header("content-type", "application/json")
                .body(format!(
                    r#"[{{"accessid":"{key}","created_at":0,"payload":{{"t":{sent}}}}}]"#
                )),
            ServerKind::Nchan => client
                .post(format!("http://127.0.0.1:{}/pub/{key}", self.port))
                .body(format!(r#"{{"t":{sent}}}"#)),
        }
    }
}

impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        if self.kind == ServerKind::Nchan {
            // nginx's master stops its workers on TERM (kill would leave them).
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/proc/<pid>/stat`'s fields after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

fn nginx() -> anyhow::Result<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .context("nginx is not installed: apt-get install nginx-light libnginx-mod-nchan")
}

/// What the subscribers share.
#[derive(Default)]
struct Counters {
    connected: AtomicUsize,
    failed: AtomicUsize,
    received: AtomicU64,
    last_micros: AtomicU64,
}

/// The send time a message carries (`"t":<µs>`), wherever it sits in the frame.
fn sent_micros(frame: &str) -> Option<u64> {
    let at = frame.find("\"t\":")? + 4;
    let digits: String = frame[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// One subscriber: connects, then records every message until `stop`; returns its latencies.
async fn subscriber(
    url: String,
    transport: Transport,
    counters: Arc<Counters>,
    stop: CancellationToken,
    client: reqwest::Client,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    let mut record = |frame: &str| {
        let now = micros_now();
        if let Some(sent) = sent_micros(frame) {
            latencies.push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
            counters.received.fetch_add(1, Ordering::Relaxed);
            counters.last_micros.fetch_max(now, Ordering::Relaxed);
        }
    };
    match transport {
        Transport::Sse => {
            let response = client
                .get(&url)
                .header("accept", "text/event-stream")
                .send()
                .await;
            let Ok(mut response) = response.and_then(|r| r.error_for_status()) else {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                return latencies;
            };
            counters.connected.fetch_add(1, Ordering::Relaxed);
            let mut frames = crate::client::SseFrames::default();
            loop {
                let chunk = tokio::select! {
                    chunk = response.chunk() => chunk,
                    _ = stop.cancelled() => break,
                };
                let Ok(Some(chunk)) = chunk else { break };
                frames.push(&chunk);
                while let Some(frame) = frames.next_frame() {
                    record(&frame);
                }
            }
        }
        Transport::WebSocket => {
            let Ok((mut socket, _)) = tokio_tungstenite::connect_async(&url).await else {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                return latencies;
            };
            counters.connected.fetch_add(1, Ordering::Relaxed);
            loop {
                let message = tokio::select! {
                    message = socket.next() => message,
                    _ = stop.cancelled() => break,
                };
                match message {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => record(&text),
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
        }
    }
    latencies
}

/// One scenario's figures for one server.
struct Row {
    server: ServerKind,
    /// The publish rate asked for (`None`: as fast as the server takes them).
    rate: Option<f64>,
    transport: Transport,
    subscribers: usize,
    keys: usize,
    published_per_s: f64,
    deliveries_per_s: f64,
    lost: i64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_delivery: f64,
    idle_bytes_per_session: f64,
}

async fn scenario(
    kind: ServerKind,
    transport: Transport,
    subscribers: usize,
    keys: usize,
    seconds: u64,
    publishers: usize,
    rate: Option<f64>,
) -> anyhow::Result<Row> {
    let server = ServerUnderTest::start(kind).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = server.rss_bytes();

    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    // One connection per subscriber: no pooling between SSE streams.
    let sse_client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .tcp_nodelay(true)
        .build()?;
    let key_names: Vec<String> = (0..keys).map(|k| format!("k{k:05}")).collect();
    let settled = |counters: &Counters| {
        counters.connected.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed)
    };
    let mut tasks = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let url = server.subscribe_url(&key_names[i % keys], transport);
        tasks.push(tokio::spawn(subscriber(
            url,
            transport,
            counters.clone(),
            stop.clone(),
            sse_client.clone(),
        )));
        // At most 256 connections in progress at once.
        while i + 1 - settled(&counters) > 256 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while settled(&counters) < subscribers {
        if Instant::now() > deadline {
            bail!("{kind:?}: subscribers did not connect in 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = counters.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{kind:?} {transport:?}: {failed} of {subscribers} subscribers could not connect");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_bytes_per_session =
        (server.rss_bytes() as f64 - rss_before as f64) / subscribers as f64;

    // Publish as fast as the server takes it (or at `rate` per second), round robin over the keys.
    let publish_client = reqwest::Client::builder()
        .pool_max_idle_per_host(publishers)
        .tcp_nodelay(true)
        .build()?;
    let server = Arc::new(server);
    let next = Arc::new(AtomicUsize::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let cpu_before = server.cpu_seconds();
    let started = micros_now();
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for _ in 0..publishers {
        let (server, client, next, published, keys) = (
            server.clone(),
            publish_client.clone(),
            next.clone(),
            published.clone(),
            key_names.clone(),
        );
        workers.push(tokio::spawn(async move {
            while Instant::now() < until {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if let Some(rate) = rate {
                    // Message i is due i/rate seconds after the start.
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if due >= until {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                let key = &keys[i % keys.len()];
                if let Ok(response) = server.publish(&client, key).send().await
                    && response.status().is_success()
                {
                    published.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let publish_seconds = (micros_now() - started) as f64 / 1e6;
    let published = published.load(Ordering::Relaxed);
    let expected = published * (subscribers / keys) as u64;
    // Wait until everything arrived or nothing more arrives for a second.
    let mut last = counters.received.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while last < expected && quiet_since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = counters.received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let cpu = server.cpu_seconds() - cpu_before;
    stop.cancel();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let received = counters.received.load(Ordering::Relaxed);
    let delivery_seconds = (counters
        .last_micros
        .load(Ordering::Relaxed)
        .saturating_sub(started)) as f64
        / 1e6;
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q) as usize)
            .map_or(f64::NAN, |&us| us as f64 / 1000.0)
    };
    Ok(Row {
        server: kind,
        rate,
        transport,
        subscribers,
        keys,
        published_per_s: published as f64 / publish_seconds,
        deliveries_per_s: received as f64 / delivery_seconds.max(publish_seconds),
        lost: expected as i64 - received as i64,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        cpu_us_per_delivery: cpu * 1e6 / received.max(1) as f64,
        idle_bytes_per_session,
    })
}

fn print_row(row: &Row) {
    println!(
        "{:<7} {:<9} {:>6}/{:<6} {:>6} {:>10.0} {:>12.0} {:>8} {:>8.2} {:>8.2} {:>12.1} {:>11.1}",
        format!("{:?}", row.server).to_lowercase(),
        format!("{:?}", row.transport).to_lowercase(),
        row.subscribers,
        row.keys,
        row.rate
            .map_or("max".to_string(), |rate| format!("{rate:.0}")),
        row.published_per_s,
        row.deliveries_per_s,
        row.lost,
        row.p50_ms,
        row.p99_ms,
        row.cpu_us_per_delivery,
        row.idle_bytes_per_session / 1024.0
    );
}

/// Runs every scenario against brunnr and Nchan and prints the table and the ratios. Each
/// scenario runs twice per server: publishing as fast as the server takes it (throughput), then
/// both at the same rate, half of Nchan's maximum (latency at equal load).
pub async fn run(seconds: u64, publishers: usize) -> anyhow::Result<()> {
    nginx()?;
    if !Path::new("/usr/lib/nginx/modules/ngx_nchan_module.so").is_file() {
        bail!("Nchan is not installed: apt-get install libnginx-mod-nchan");
    }
    println!(
        "brunnr bench --live: {seconds} s of publishing per run, {publishers} publishing connections"
    );
    println!(
        "{:<7} {:<9} {:>6}/{:<6} {:>6} {:>10} {:>12} {:>8} {:>8} {:>8} {:>12} {:>11}",
        "server",
        "transport",
        "subs",
        "keys",
        "rate",
        "publish/s",
        "deliveries/s",
        "lost",
        "p50 ms",
        "p99 ms",
        "CPU µs/deliv",
        "idle KiB/s"
    );
    let mut summary = Vec::new();
    for (subscribers, keys) in [(1_000, 100), (10_000, 10_000)] {
        for transport in [Transport::Sse, Transport::WebSocket] {
            // First as fast as each takes it, then both at half of Nchan's maximum.
            let mut rows: Vec<Row> = Vec::new();
            let mut rate = None;
            for _ in 0..2 {
                for kind in [ServerKind::Nchan, ServerKind::Brunnr] {
                    let row = scenario(
                        kind,
                        transport,
                        subscribers,
                        keys,
                        seconds,
                        publishers,
                        rate,
                    )
                    .await?;
                    print_row(&row);
                    rows.push(row);
                }
                rate = Some(rows[0].published_per_s / 2.0);
            }
            summary.push(rows);
        }
    }
    println!();
    for rows in &summary {
        let [nchan, brunnr, nchan_paced, brunnr_paced] = &rows[..] else {
            unreachable!("four runs per scenario")
        };
        println!(
            "{:>6}/{:<6} {:<9} brunnr/nchan: deliveries/s {:.2}x (p99 {:.2}x), p99 at {:.0} publishes/s {:.2}x, CPU per delivery {:.2}x, idle memory per session {:.2}x",
            brunnr.subscribers,
            brunnr.keys,
            format!("{:?}", brunnr.transport).to_lowercase(),
            brunnr.deliveries_per_s / nchan.deliveries_per_s,
            brunnr.p99_ms / nchan.p99_ms,
            nchan_paced.rate.unwrap_or_default(),
            brunnr_paced.p99_ms / nchan_paced.p99_ms,
            brunnr.cpu_us_per_delivery / nchan.cpu_us_per_delivery,
            brunnr.idle_bytes_per_session / nchan.idle_bytes_per_session
        );
    }
    Ok(())
}
