//! The NATS sources: one connection, queue-group subscriptions on the Kaa and monit subjects, each
//! message decoded by `kaa` or `monit` and handed to the hub.
//!
//! brunnr starts when NATS is down (`/readyz` says 503 until the connection is up); the client
//! reconnects by itself and restores the subscriptions. A message that does not decode is counted
//! (`brunnr_events_rejected_total{source, reason}`) and logged at most once per
//! [`LOG_INTERVAL`] per source, so a stream of garbage neither floods the log nor stalls anything.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{kaa, monit};
use crate::config::NatsSourceConfig;
use crate::event::now_ms;

use crate::hub::Hub;
use crate::metrics as m;

/// At most one log line per source this often for messages that do not decode.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long a closed inbox waits before its SSE clients are told (monit's own ordering delay:
/// the last `monitor.user` messages may still be on their way).
pub const INBOX_CLOSE_DELAY: Duration = Duration::from_secs(1);

/// The running NATS sources.
#[derive(Clone)]
pub struct NatsSource {
    client: async_nats::Client,
}

impl NatsSource {
    /// Connects (in the background: NATS may be down) and subscribes; messages flow to `hub`
    /// until `stop`.
    pub async fn start(
        config: &NatsSourceConfig,
        hub: Arc<Hub>,
        stop: CancellationToken,
    ) -> Result<NatsSource, String> {
        let client = async_nats::ConnectOptions::new()
            .name("brunnr-sources")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(config.url.as_str())
            .await
            .map_err(|error| error.to_string())?;
        let mut subjects: Vec<(&str, Decoder)> = Vec::new();
        if config.kaa {
            subjects.extend(
                config
                    .kaa_subjects
                    .iter()
                    .map(|s| (s.as_str(), Decoder::Kaa)),
            );
        }
        if config.monit {
            subjects.extend(monit::SUBJECTS.map(|s| (s, Decoder::Monit)));
        }
        let complaints = Arc::new(Complaints::default());
        for (subject, decoder) in subjects {
            let subscription = client
                .queue_subscribe(subject.to_owned(), config.queue_group.clone())
                .await
                .map_err(|error| format!("cannot subscribe to {subject}: {error}"))?;
            tokio::spawn(consume(
                subscription,
                decoder,
                hub.clone(),
                stop.clone(),
                complaints.clone(),
            ));
        }
        Ok(NatsSource { client })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// Which decoder a subscription's messages go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    Kaa,
    Monit,
}

/// Messages decoded together, and chunks being decoded at once: decoding runs on every runtime
/// thread while `buffered` hands results back in arrival order (one endpoint's events stay in
/// order).
const DECODE_CHUNK: usize = 256;
const DECODERS: usize = 4;

async fn consume(
    subscription: async_nats::Subscriber,
    decoder: Decoder,
    hub: Arc<Hub>,
    stop: CancellationToken,
    complaints: Arc<Complaints>,
) {
    let mut decoded = subscription
        .ready_chunks(DECODE_CHUNK)
        .map(|messages| {
            tokio::spawn(async move {
                let now = now_ms();
                messages
                    .iter()
                    .map(|message| decode(decoder, message.subject.as_str(), &message.payload, now))
                    .collect::<Vec<_>>()
            })
        })
        .buffered(DECODERS);
    let counters = Counters::new();
    loop {
        let chunk = tokio::select! {
            chunk = decoded.next() => chunk,
            _ = stop.cancelled() => break,
        };
        match chunk {
            Some(Ok(outcomes)) => {
                for outcome in outcomes {
                    apply(&hub, outcome, &complaints, &counters);
                }
            }
            Some(Err(error)) => tracing::error!(%error, "Decoding NATS messages failed."),
            None => break,
        }
    }
}

/// What one message meant.
pub enum Decoded {
    Kaa(Vec<crate::event::Event>),
    Monit(monit::MonitMessage),
}

/// Why one message was refused: source, reason, subject, error.
pub type Refusal = (&'static str, &'static str, String, String);

/// Decodes one message received on `subject` (no I/O, no hub: runs in parallel).
pub fn decode(
    decoder: Decoder,
    subject: &str,
    payload: &[u8],
    now_ms: i64,
) -> Result<Decoded, Refusal> {
    match decoder {
        Decoder::Kaa => kaa::decode(subject, payload, now_ms)
            .map(Decoded::Kaa)
            .map_err(|e| (kaa::SOURCE, e.reason(), subject.to_owned(), e.to_string())),
        Decoder::Monit => monit::decode(subject, payload, now_ms)
            .map(Decoded::Monit)
            .map_err(|e| (monit::SOURCE, e.reason(), subject.to_owned(), e.to_string())),
    }
}

/// Received-event counters, looked up once per subscription rather than per message.
struct Counters {
    kaa: metrics::Counter,
    monit: metrics::Counter,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            kaa: metrics::counter!(m::EVENTS_RECEIVED, "source" => kaa::SOURCE),
            monit: metrics::counter!(m::EVENTS_RECEIVED, "source" => monit::SOURCE),
        }
    }
}

/// Hands what a message meant to the hub, in arrival order.
fn apply(
    hub: &Arc<Hub>,
    outcome: Result<Decoded, Refusal>,
    complaints: &Complaints,
    counters: &Counters,
) {
    match outcome {
        Ok(Decoded::Kaa(events)) => {
            counters.kaa.increment(events.len() as u64);
            for event in events {
                hub.publish(event);
            }
        }
        Ok(Decoded::Monit(monit::MonitMessage::Events(events))) => {
            counters.monit.increment(events.len() as u64);
            for event in events {
                hub.publish(event);
            }
        }
        Ok(Decoded::Monit(monit::MonitMessage::Opened(inbox))) => {
            tracing::debug!(%inbox, "A monit inbox opened.");
        }
        Ok(Decoded::Monit(monit::MonitMessage::Closed(inbox, outcome))) => {
            let hub = hub.clone();
            tokio::spawn(async move {
                tokio::time::sleep(INBOX_CLOSE_DELAY).await;
                hub.close_inbox(&inbox, outcome);
            });
        }
        Err((source, reason, subject, error)) => {
            complaints.reject(source, reason, &subject, &error)
        }
    }
}

/// Counts refused messages and logs them, at most once per [`LOG_INTERVAL`] per source.
#[derive(Default)]
pub struct Complaints {
    /// Per source: when it was last logged, and how many were refused since.
    last: Mutex<Vec<(&'static str, Option<Instant>, u64)>>,
}

impl Complaints {
    fn reject(
        &self,
        source: &'static str,
        reason: &'static str,
        subject: &str,
        error: &dyn std::fmt::Display,
    ) {
        metrics::counter!(m::EVENTS_REJECTED, "source" => source, "reason" => reason).increment(1);
        let mut last = self.last.lock().expect("never poisoned");
        let entry = match last.iter_mut().position(|(s, _, _)| *s == source) {
            Some(index) => &mut last[index],
            None => {
                last.push((source, None, 0));
                last.last_mut().expect("just pushed")
            }
        };
        if entry
            .1
            .is_none_or(|logged| logged.elapsed() >= LOG_INTERVAL)
        {
            tracing::warn!(source, subject, %error, also_refused = entry.2, "A NATS message was refused.");
            entry.1 = Some(Instant::now());
            entry.2 = 0;
        } else {
            entry.2 += 1;
        }
    }
}
