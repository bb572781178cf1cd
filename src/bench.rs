//! `brunnr bench`: the load scenario. Posts WRP events over keep-alive HTTP to an in-process brunnr
//! whose norns point at a local receiver, and measures, in the same run, the same load posted
//! straight to that receiver: the machine's ceiling. Prints ingest events/s, deliveries/s and
//! delivery latency (p50/p99) at saturation and at a rate below it.
//!
//! Everything runs on loopback, bounded by `--events` and `--seconds`.

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

    // brunnr, in process, on a fresh data directory.
    let data = std::env::temp_dir().join(format!("brunnr-bench-{}", std::process::id()));
    let mut config = Config::default();
    config.store.path = data.clone();
    config.delivery.allow_private_destinations = true;
    config.delivery.queue_size = 100_000;
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
    Ok(())
}
