//! `brunnr bench`: the load scenario. Posts WRP events over keep-alive HTTP to an in-process brunnr
//! whose norns point at a local receiver, and measures, in the same run, the same load posted
//! straight to that receiver: the machine's ceiling. Prints ingest events/s, deliveries/s and
//! delivery latency (p50/p99) at saturation and at a rate below it.
//!
//! Everything runs on loopback, bounded by `--events` and `--seconds`. `--live` runs the live
//! fan-out scenarios against Nchan instead (`live`).

pub mod kaa;
pub mod live;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;

use crate::config::Config;
use crate::wrp::WrpMessage;

/// Options of `brunnr bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Devices the events are spread over (round robin).
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Norns per device, all pointing at the local receiver.
    #[arg(long, default_value_t = 1)]
    pub norns_per_device: usize,
    /// Events posted in each saturation phase.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Concurrent keep-alive connections posting events.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Events per second of the latency phase (0: half of brunnr's measured ingest rate).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Length of the latency phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Also measure an SQS norn (moto_server) and a NATS norn (nats-server), started here from
    /// PATH or ./.venv/bin (`./scripts/test` installs both).
    #[arg(long)]
    pub sinks: bool,
    /// Events posted for each sink phase (moto_server is slow: keep it small).
    #[arg(long, default_value_t = 1_000)]
    pub sink_events: usize,
    /// Measure live fan-out (SSE and WebSocket subscribers) against Nchan instead (needs Debian's
    /// nginx-light and libnginx-mod-nchan); `--seconds` of publishing per run over
    /// `--connections` connections.
    #[arg(long)]
    pub live: bool,
    /// Measure Kaa events decoded and routed from NATS against a raw NATS subscriber instead
    /// (`--events` messages; starts nats-server like `--sinks`).
    #[arg(long)]
    pub kaa: bool,
}

fn micros_now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The trivial receiver: answers 200 and notes the latency carried in the body (`{"t": µs}`).
#[derive(Default)]
struct Sink {
    count: AtomicU64,
    last_micros: AtomicU64,
    latencies: Mutex<Vec<u64>>,
}

impl Sink {
    fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
        self.latencies.lock().expect("lock").clear();
    }

    fn record(&self, body: &[u8]) {
        let now = micros_now();
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
            && let Some(sent) = value["t"].as_u64()
        {
            self.latencies
                .lock()
                .expect("lock")
                .push(now.saturating_sub(sent));
        }
        self.last_micros.store(now, Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn percentiles(&self) -> (f64, f64) {
        let mut latencies = self.latencies.lock().expect("lock").clone();
        if latencies.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
        (at(0.50), at(0.99))
    }
}

async fn start_receiver(sink: Arc<Sink>) -> anyhow::Result<String> {
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let sink = sink.clone();
        async move {
            sink.record(&body);
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// Makes request `i`, stamped with the send time in µs.
type MakeRequest =
    Arc<dyn Fn(&reqwest::Client, usize, u64) -> reqwest::RequestBuilder + Send + Sync>;

/// What a load phase measured.
struct Phase {
    posted: usize,
    refused: usize,
    post_seconds: f64,
    deliveries: u64,
    delivery_seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Posts `count` requests made by `make(i, t)` with `connections` workers, at `rate` per second
/// (0: as fast as possible), then waits for `expect` deliveries at the sink.
async fn load(
    client: &reqwest::Client,
    sink: &Arc<Sink>,
    count: usize,
    connections: usize,
    rate: u64,
    expect: u64,
    make: MakeRequest,
) -> Phase {
    sink.reset();
    let next = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let start_micros = micros_now();
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (client, next, refused, make) =
            (client.clone(), next.clone(), refused.clone(), make.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                if rate > 0 {
                    let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                match make(&client, i, micros_now()).send().await {
                    Ok(response) if response.status().is_success() => {}
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let post_seconds = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.count.load(Ordering::SeqCst) < expect && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deliveries = sink.count.load(Ordering::SeqCst);
    let delivery_seconds = (sink
        .last_micros
        .load(Ordering::SeqCst)
        .saturating_sub(start_micros)) as f64
        / 1e6;
    let (p50_ms, p99_ms) = sink.percentiles();
    Phase {
        posted: count,
        refused: refused.load(Ordering::Relaxed),
        post_seconds,
        deliveries,
        delivery_seconds,
        p50_ms,
        p99_ms,
    }
}

fn wrp_event(device: usize, sent_micros: u64) -> Vec<u8> {
    WrpMessage {
        msg_type: crate::wrp::SIMPLE_EVENT,
        source: format!("mac:{device:012x}"),
        dest: "event:device-status/online".into(),
        content_type: Some("application/json".into()),
        payload: Some(format!("{{\"t\":{sent_micros}}}").into_bytes().into()),
        ..Default::default()
    }
    .to_msgpack()
}

/// Runs the scenario and prints the summary.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.live {
        return live::run(args.seconds, args.connections).await;
    }
    if args.kaa {
        return kaa::run(args.events).await;
    }
    if args.devices == 0 || args.norns_per_device == 0 || args.events == 0 || args.connections == 0
    {
        bail!("--devices, --norns-per-device, --events and --connections must be at least 1");
    }
    let sink = Arc::new(Sink::default());
    let receiver = start_receiver(sink.clone()).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .tcp_nodelay(true)
        .build()?;

    let servers = if args.sinks {
        Some(SinkServers::start().await?)
    } else {
        None
    };

    // brunnr, in process, on a fresh data directory.
    let data = std::env::temp_dir().join(format!("brunnr-bench-{}", std::process::id()));
    let mut config = Config::default();
    config.store.path = data.clone();
    config.delivery.allow_private_destinations = true;
    config.delivery.queue_size = 100_000;
    config.sinks.nats.url = servers.as_ref().map(|servers| servers.nats_url());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let brunnr = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::run(config, listener, async move {
        let _ = stopped.await;
    }));
    for _ in 0..100 {
        if client
            .get(format!("{brunnr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let norns = args.devices * args.norns_per_device;
    eprintln!("registering {norns} norns…");
    for device in 0..args.devices {
        for n in 0..args.norns_per_device {
            let body = serde_json::json!({
                "deviceID": format!("mac:{device:012x}"),
                "destination": {"http": {"url": format!("{receiver}/norn/{n}"), "format": "payload"}},
                "duration": "1h",
            });
            let response = client
                .post(format!("{brunnr}/norns"))
                .json(&body)
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("creating a norn failed: {}", response.text().await?);
            }
        }
    }

    let direct: MakeRequest = {
        let url = format!("{receiver}/direct");
        Arc::new(move |client, _i, t| {
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(format!("{{\"t\":{t}}}"))
        })
    };
    let devices = args.devices;
    let via_brunnr: MakeRequest = {
        let url = format!("{brunnr}/events");
        Arc::new(move |client, i, t| {
            client
                .post(&url)
                .header("content-type", "application/msgpack")
                .body(wrp_event(i % devices, t))
        })
    };
    let fan_out = args.norns_per_device as u64;

    eprintln!(
        "ceiling: {} requests straight to the receiver…",
        args.events
    );
    let ceiling = load(
        &client,
        &sink,
        args.events,
        args.connections,
        0,
        args.events as u64,
        direct.clone(),
    )
    .await;
    eprintln!("brunnr: {} events at saturation…", args.events);
    let saturated = load(
        &client,
        &sink,
        args.events,
        args.connections,
        0,
        args.events as u64 * fan_out,
        via_brunnr.clone(),
    )
    .await;
    let ingest_rate = (saturated.posted - saturated.refused) as f64 / saturated.post_seconds;
    let rate = if args.rate > 0 {
        args.rate
    } else {
        (ingest_rate / 2.0).max(1.0) as u64
    };
    let paced_events = (rate * args.seconds) as usize;
    eprintln!(
        "latency below saturation: {rate} events/s for {}s, direct then through brunnr…",
        args.seconds
    );
    let ceiling_paced = load(
        &client,
        &sink,
        paced_events,
        args.connections,
        rate,
        paced_events as u64,
        direct,
    )
    .await;
    let paced = load(
        &client,
        &sink,
        paced_events,
        args.connections,
        rate,
        paced_events as u64 * fan_out,
        via_brunnr,
    )
    .await;

    let sink_rows = match &servers {
        Some(servers) => Some(sink_phases(&client, &brunnr, servers, &args).await?),
        None => None,
    };

    let _ = stop.send(());
    server.await.context("the server task failed")??;
    let _ = std::fs::remove_dir_all(&data);

    let ceiling_rate = ceiling.posted as f64 / ceiling.post_seconds;
    let deliveries_rate = saturated.deliveries as f64 / saturated.delivery_seconds.max(1e-9);
    println!();
    println!(
        "brunnr bench: {norns} norns on {} devices, {} connections, {} events per saturation phase",
        args.devices, args.connections, args.events
    );
    println!(
        "{:<40} {:>12} {:>14} {:>9} {:>9} {:>8}",
        "phase", "events/s", "deliveries/s", "p50 ms", "p99 ms", "lost"
    );
    let row = |name: &str, phase: &Phase, fan_out: u64| {
        println!(
            "{:<40} {:>12.0} {:>14.0} {:>9.2} {:>9.2} {:>8}",
            name,
            (phase.posted - phase.refused) as f64 / phase.post_seconds,
            phase.deliveries as f64 / phase.delivery_seconds.max(1e-9),
            phase.p50_ms,
            phase.p99_ms,
            (phase.posted as u64 * fan_out).saturating_sub(phase.deliveries) + phase.refused as u64,
        )
    };
    row("ceiling: straight to the receiver", &ceiling, 1);
    row("brunnr at saturation", &saturated, fan_out);
    row(&format!("ceiling at {rate} events/s"), &ceiling_paced, 1);
    row(&format!("brunnr at {rate} events/s"), &paced, fan_out);
    println!();
    println!("ingest / ceiling:     {:.2}", ingest_rate / ceiling_rate);
    println!(
        "deliveries / ceiling: {:.2}",
        deliveries_rate / ceiling_rate
    );
    if let Some(rows) = sink_rows {
        println!();
        println!(
            "sinks: one norn each, {} events posted as fast as possible",
            args.sink_events
        );
        println!(
            "{:<48} {:>14} {:>9} {:>9}",
            "sink", "deliveries/s", "p50 ms", "p99 ms"
        );
        for row in &rows {
            println!("{:<48} {:>14.0} {:>9} {:>9}", row.0, row.1, row.2, row.3);
        }
        println!();
        println!(
            "sqs batched / one message per call: {:.1}",
            rows[1].1 / rows[2].1
        );
        println!(
            "nats / webhook (at saturation):     {:.2}",
            rows[0].1 / deliveries_rate
        );
    }
    Ok(())
}

/// Waits (at most 30 s) until something listens on `port`.
pub async fn wait_listening(name: &str, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("{name} did not start on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A test server process (nats-server, moto_server) on a free port, killed when dropped.
pub struct ServerProcess {
    child: std::process::Child,
    pub port: u16,
}

impl ServerProcess {
    /// Starts `program` (from ./.venv/bin, where `./scripts/test` installs it, or PATH) with
    /// `<host_flag> 127.0.0.1 -p <port>` and waits until it listens.
    pub async fn start(program: &str, host_flag: &str) -> anyhow::Result<ServerProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let local = std::path::Path::new(".venv/bin").join(program);
        let path = if local.is_file() {
            local
        } else {
            program.into()
        };
        let child = std::process::Command::new(&path)
            .args([host_flag, "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| {
                format!("cannot start {program}: run ./scripts/test once to install it into .venv")
            })?;
        let server = ServerProcess { child, port };
        wait_listening(program, port).await?;
        Ok(server)
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nats-server and moto_server.
struct SinkServers {
    nats: ServerProcess,
    moto: ServerProcess,
}

impl SinkServers {
    async fn start() -> anyhow::Result<SinkServers> {
        Ok(SinkServers {
            nats: ServerProcess::start("nats-server", "-a").await?,
            moto: ServerProcess::start("moto_server", "-H").await?,
        })
    }

    fn nats_url(&self) -> String {
        self.nats.url("nats")
    }

    fn moto_url(&self) -> String {
        self.moto.url("http")
    }
}

/// (name, deliveries/s, p50 ms, p99 ms) per sink.
type SinkRow = (String, f64, String, String);

/// A quantile from a Prometheus histogram: the upper bound of the bucket it falls in.
fn histogram_quantile(metrics: &str, name: &str, labels: &str, q: f64) -> String {
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}_bucket")) && line.contains(labels))
        .filter_map(|line| {
            let le = line.split("le=\"").nth(1)?.split('"').next()?;
            let count = line.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((le.parse::<f64>().unwrap_or(f64::INFINITY), count))
        })
        .collect();
    let total = buckets.iter().map(|(_, count)| *count).fold(0.0, f64::max);
    match buckets.iter().find(|(_, count)| *count >= total * q) {
        Some((le, _)) if le.is_finite() => format!("≤{:.1}", le * 1000.0),
        _ => "-".into(),
    }
}

/// Posts `events` WRP events from `device` over `connections` keep-alive connections.
async fn post_all(
    client: reqwest::Client,
    url: String,
    device: String,
    events: usize,
    connections: usize,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (client, url, next, device) =
            (client.clone(), url.clone(), next.clone(), device.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < events {
                let body = WrpMessage {
                    msg_type: crate::wrp::SIMPLE_EVENT,
                    source: device.clone(),
                    dest: "event:device-status/online".into(),
                    content_type: Some("application/json".into()),
                    payload: Some(format!("{{\"t\":{}}}", micros_now()).into_bytes().into()),
                    ..Default::default()
                };
                let _ = client
                    .post(&url)
                    .header("content-type", "application/msgpack")
                    .body(body.to_msgpack())
                    .send()
                    .await;
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
}

async fn sink_phases(
    client: &reqwest::Client,
    brunnr: &str,
    servers: &SinkServers,
    args: &BenchArgs,
) -> anyhow::Result<Vec<SinkRow>> {
    use futures::StreamExt;
    let events = args.sink_events;
    let url = format!("{brunnr}/events");
    let create = |device: &str, destination: serde_json::Value| {
        let body =
            serde_json::json!({"deviceID": device, "duration": "1h", "destination": destination});
        client.post(format!("{brunnr}/norns")).json(&body).send()
    };
    let mut rows = Vec::new();

    // NATS: a subscriber here reads the send time from the envelope's payload.
    let subscriber = async_nats::connect(servers.nats_url()).await?;
    let mut messages = subscriber.subscribe("bench.nats").await?;
    subscriber.flush().await?;
    let device = "mac:0000000a0001";
    create(
        device,
        serde_json::json!({"nats": {"subject": "bench.nats"}}),
    )
    .await?
    .error_for_status()?;
    let sink = Sink::default();
    let started = Instant::now();
    let posting = tokio::spawn(post_all(
        client.clone(),
        url.clone(),
        device.into(),
        events,
        args.connections,
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while (sink.count.load(Ordering::SeqCst) as usize) < events && Instant::now() < deadline {
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(1), messages.next()).await
        {
            let envelope: serde_json::Value =
                serde_json::from_slice(&message.payload).unwrap_or_default();
            sink.record(envelope["payload"].to_string().as_bytes());
        }
    }
    let _ = posting.await;
    let (p50, p99) = sink.percentiles();
    rows.push((
        "nats (json)".to_owned(),
        sink.count.load(Ordering::SeqCst) as f64 / started.elapsed().as_secs_f64(),
        format!("{p50:.2}"),
        format!("{p99:.2}"),
    ));

    // SQS through brunnr, batched; counted by brunnr's own delivery metrics.
    let sqs = aws_sdk_sqs::Client::new(
        &aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "bench", "bench", None, None, "bench",
            ))
            .endpoint_url(servers.moto_url())
            .load()
            .await,
    );
    let queue = sqs
        .create_queue()
        .queue_name("bench")
        .send()
        .await?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let device = "mac:0000000a0002";
    let destination = serde_json::json!({"sqs": {"queueURL": queue, "region": "us-east-1",
        "accessKeyID": "bench", "secretAccessKey": "bench", "endpointURL": servers.moto_url()}});
    create(device, destination).await?.error_for_status()?;
    let scrape = || async {
        let text = client
            .get(format!("{brunnr}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let count = crate::metrics::sum_samples(
            &text,
            "brunnr_deliveries_total",
            "sink=\"sqs\",outcome=\"success\"",
        );
        anyhow::Ok((count, text))
    };
    let started = Instant::now();
    post_all(
        client.clone(),
        url.clone(),
        device.into(),
        events,
        args.connections,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut count, mut text) = scrape().await?;
    while (count as usize) < events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        (count, text) = scrape().await?;
    }
    let labels = "sink=\"sqs\"";
    let calls = crate::metrics::sum_samples(
        &text,
        "brunnr_sink_calls_total",
        "sink=\"sqs\",outcome=\"ok\"",
    );
    rows.push((
        format!(
            "sqs through brunnr ({:.1} per SendMessageBatch)",
            count / calls.max(1.0)
        ),
        count / started.elapsed().as_secs_f64(),
        histogram_quantile(&text, "brunnr_delivery_duration_seconds", labels, 0.5),
        histogram_quantile(&text, "brunnr_delivery_duration_seconds", labels, 0.99),
    ));

    // The baseline: one SendMessage per message, in order, as a norn without batching would.
    let single = (events / 5).max(100);
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(single);
    for n in 0..single {
        let call = Instant::now();
        sqs.send_message()
            .queue_url(&queue)
            .message_body(format!("{{\"n\":{n}}}"))
            .send()
            .await?;
        latencies.push(call.elapsed().as_micros() as u64);
    }
    let rate = single as f64 / started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    rows.push((
        "sqs one SendMessage per message (same server)".to_owned(),
        rate,
        format!("{:.2}", at(0.5)),
        format!("{:.2}", at(0.99)),
    ));
    Ok(rows)
}
