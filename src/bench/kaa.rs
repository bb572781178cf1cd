//! `brunnr bench --kaa`: Kaa events decoded and routed per second by one brunnr from NATS, next to
//! a raw NATS subscriber on the same subject in the same run (the ceiling: what a subscriber that
//! only counts takes).
//!
//! One nats-server (started here); `--events` Avro `RegisteredEvent`s over 1000 endpoints are
//! published as fast as the server takes them, once to the raw subscriber, once to brunnr
//! (in-process, defaults: history on), which counts `brunnr_events_received_total{source="kaa"}`
//! as it routes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use futures::StreamExt;

use super::ServerProcess;
use crate::config::{Config, NatsSourceConfig};
use crate::source::kaa::Record;

const SUBJECT: &str = "kaa.v1.events.bench.endpoint.lifecycle.registered";

fn message(i: usize) -> bytes::Bytes {
    let (schema, _) = Record::Registered.schema();
    let value = Value::Record(vec![
        ("correlationId".into(), Value::String(format!("corr-{i}"))),
        ("timestamp".into(), Value::Long(crate::event::now_ms())),
        ("timeout".into(), Value::Long(0)),
        ("appVersionName".into(), Value::String("v1".into())),
        (
            "endpointId".into(),
            Value::String(format!("ep-{}", i % 1000)),
        ),
        ("originatorReplicaId".into(), Value::String("bench".into())),
    ]);
    apache_avro::to_avro_datum(schema, value)
        .expect("the record matches the schema")
        .into()
}

/// Publishes `messages` and returns when the last was flushed.
async fn publish(client: &async_nats::Client, messages: &[bytes::Bytes]) -> anyhow::Result<()> {
    for message in messages {
        client.publish(SUBJECT, message.clone()).await?;
    }
    client.flush().await?;
    Ok(())
}

/// Waits until `count()` reaches `target` or stops moving for a second; returns the count and
/// when it last moved.
async fn settle(count: impl Fn() -> u64, target: u64) -> (u64, Instant) {
    let (mut last, mut moved) = (count(), Instant::now());
    while last < target && moved.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = count();
        if now != last {
            last = now;
            moved = Instant::now();
        }
    }
    (last, moved)
}

pub async fn run(events: usize) -> anyhow::Result<()> {
    let nats = ServerProcess::start("nats-server", "-a").await?;
    let messages: Vec<bytes::Bytes> = (0..events).map(message).collect();
    let producer = async_nats::connect(nats.url("nats")).await?;

    // The ceiling: a raw subscriber that only counts.
    let raw = async_nats::connect(nats.url("nats")).await?;
    let mut subscription = raw.subscribe(SUBJECT).await?;
    raw.flush().await?;
    let counted = Arc::new(AtomicU64::new(0));
    let counter = counted.clone();
    let reader = tokio::spawn(async move {
        while subscription.next().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let started = Instant::now();
    publish(&producer, &messages).await?;
    let (raw_count, raw_done) = settle(|| counted.load(Ordering::Relaxed), events as u64).await;
    let raw_rate = raw_count as f64 / (raw_done - started).as_secs_f64();
    reader.abort();
    drop(raw);

    // brunnr, in process, subscribed with its queue group.
    let data = std::env::temp_dir().join(format!("brunnr-bench-kaa-{}", std::process::id()));
    let mut config = Config::default();
    config.store.path = data.clone();
    config.sources.nats = Some(NatsSourceConfig {
        url: nats.url("nats"),
        monit: false,
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = crate::Server::start(config, listener).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let metrics = crate::metrics::prometheus();
    let received = || {
        crate::metrics::sum_samples(
            &metrics.render(),
            crate::metrics::EVENTS_RECEIVED,
            "source=\"kaa\"",
        ) as u64
    };
    // Ready: a first message goes through.
    let base = received();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received() == base {
        anyhow::ensure!(Instant::now() < deadline, "brunnr never took a Kaa message");
        publish(&producer, &messages[..1]).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = received();
    let started = Instant::now();
    publish(&producer, &messages).await?;
    let (brunnr_count, brunnr_done) =
        settle(|| received().saturating_sub(base), events as u64).await;
    let brunnr_rate = brunnr_count as f64 / (brunnr_done - started).as_secs_f64();
    let _ = stop.send(());
    running.await??;
    let _ = std::fs::remove_dir_all(&data);

    println!(
        "brunnr bench --kaa: {events} RegisteredEvents over 1000 endpoints, published as fast as nats-server takes them"
    );
    println!("{:<44} {:>12} {:>8}", "", "events/s", "lost");
    println!(
        "{:<44} {:>12.0} {:>8}",
        "ceiling: raw NATS subscriber (counts only)",
        raw_rate,
        events as u64 - raw_count
    );
    println!(
        "{:<44} {:>12.0} {:>8}",
        "brunnr: Avro decode + route + history",
        brunnr_rate,
        events as u64 - brunnr_count
    );
    println!("\nbrunnr / ceiling: {:.2}", brunnr_rate / raw_rate);
    Ok(())
}
