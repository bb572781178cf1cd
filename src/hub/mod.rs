//! The hub: takes events from sources, routes each by key, and hands it to every subscription of
//! that key.
//!
//! ```text
//! source ──admit (≤ server.max_events_in_flight, else 429)──► publish ──► Router (key → subscriptions)
//!                                                                └─► Subscription::offer ──► worker ──► sink
//! ```
//! Routing happens on the source's own task: a hop through one router task cost a third of the
//! throughput and made it erratic (see docs/benchmarks.md). Nothing on this path waits on a
//! destination: per-norn queues are bounded and overflow drops (see `subscription`). The hub also owns the norn registry (`norns`): the store is written first,
//! then the index, so what the API answered is what survives a restart.

pub mod filter;
pub mod history;
pub mod live;
pub mod norns;
pub mod router;
pub mod subscription;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, DeliveryConfig};
use crate::event::Event;
use crate::metrics as m;
use crate::norn::Destination;
use crate::sink::address_policy::AddressPolicy;
use crate::sink::nats::{NatsConnection, NatsSink};
use crate::sink::sqs::{SqsClients, SqsSink};
use crate::sink::webhook::{WebhookClient, WebhookSink};
use crate::sink::{DeliveryError, Sink};
use crate::store::{HistoryStore, NornStore, StoreError};
use live::Live;
use router::Router;

/// What the delivery workers share.
pub struct DeliveryContext {
    pub config: DeliveryConfig,
    /// Which destination addresses are allowed (checked at creation and at connect time).
    pub address_policy: AddressPolicy,
    pub webhook: WebhookClient,
    pub sqs: Arc<SqsClients>,
    /// The shared NATS connection, when one is configured.
    pub nats: Option<NatsConnection>,
    /// Workers and failure notices, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

impl DeliveryContext {
    pub fn new(config: &Config, nats: Option<NatsConnection>) -> DeliveryContext {
        let sqs = Arc::new(SqsClients::new(
            config.delivery.timeout,
            config.sinks.sqs.max_batch_bytes as usize,
        ));
        let config: DeliveryConfig = config.delivery.clone();
        DeliveryContext {
            sqs,
            nats,
            webhook: WebhookClient::new(AddressPolicy::from(&config), config.timeout),
            address_policy: AddressPolicy::from(&config),
            config,
            tracker: TaskTracker::new(),
        }
    }

    /// The sink for one destination.
    pub fn sink_for(&self, destination: &Destination) -> Arc<dyn Sink> {
        match destination {
            Destination::Http(http) => {
                Arc::new(WebhookSink::new(self.webhook.clone(), http.clone()))
            }
            Destination::Sqs(sqs) => Arc::new(SqsSink::new(self.sqs.clone(), (**sqs).clone())),
            Destination::Nats(nats) => match &self.nats {
                Some(connection) => Arc::new(NatsSink::new(connection.clone(), nats.clone())),
                None => Arc::new(Unavailable("nats")),
            },
        }
    }
}

/// A sink whose service is not configured (a NATS norn stored before `sinks.nats` was removed).
struct Unavailable(&'static str);

#[async_trait::async_trait]
impl Sink for Unavailable {
    fn name(&self) -> &'static str {
        self.0
    }

    async fn deliver(&self, _batch: &[Arc<Event>]) -> Result<(), DeliveryError> {
        Err(DeliveryError::Permanent {
            reason: format!("no {} server is configured", self.0),
        })
    }
}

/// The event kinds that close a monit inbox.
pub const INBOX_DONE: &str = "done";
pub const INBOX_ERROR: &str = "error";

/// How a monit inbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxClose {
    Done,
    Error,
}

/// Too many events are being taken in at once; the source should answer 429.
#[derive(Debug, thiserror::Error)]
#[error("the hub is busy; try again")]
pub struct HubBusy;

/// Routes events to subscriptions and keeps the norn registry.
pub struct Hub {
    router: Router,
    /// Events being taken in (read, decoded, routed) at once.
    ingest: Arc<Semaphore>,
    delivery: Arc<DeliveryContext>,
    store: Arc<dyn NornStore>,
    /// Live sessions and history, by key.
    live: Arc<Live>,
    history_store: Arc<dyn HistoryStore>,
    config: Arc<Config>,
    /// Serialises norn writes, so the one-norn-per-(key, destination) rule holds.
    writes: tokio::sync::Mutex<()>,
    /// `brunnr_events_unrouted_total`, looked up once (it is counted on the ingest path).
    unrouted: metrics::Counter,
}

impl Hub {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn NornStore>,
        history_store: Arc<dyn HistoryStore>,
        nats: Option<NatsConnection>,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            router: Router::default(),
            live: Arc::new(Live::new(&config.live)),
            history_store,
            ingest: Arc::new(Semaphore::new(config.server.max_events_in_flight)),
            delivery: Arc::new(DeliveryContext::new(&config, nats)),
            store,
            config,
            writes: tokio::sync::Mutex::new(()),
            unrouted: metrics::counter!(m::EVENTS_UNROUTED),
        })
    }

    /// Admits one event to be taken in, or refuses at once when too many are; hold the permit
    /// while reading, decoding and publishing it.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, HubBusy> {
        self.ingest.clone().try_acquire_owned().map_err(|_| HubBusy)
    }

    /// Hands `event` to each subscription of its key (norns and live sessions) and keeps it in
    /// the key's history. Never waits.
    pub fn publish(&self, event: Event) {
        let event = Arc::new(event);
        let norns = self.route(&event);
        let sessions = self.live.publish(&event.key, std::slice::from_ref(&event));
        if norns == 0 && sessions == 0 {
            self.unrouted.increment(1);
        }
    }

    /// Publishes several events; those of one key reach its live sessions as one batch (one
    /// notifier frame per push), in order.
    pub fn publish_all(&self, events: Vec<Event>) {
        // Grouped by key, in the order keys first appear.
        let mut groups: Vec<(Vec<Arc<Event>>, usize)> = Vec::new();
        let mut group_of: std::collections::HashMap<String, usize> = Default::default();
        for event in events {
            let event = Arc::new(event);
            let norns = self.route(&event);
            let group = *group_of.entry(event.key.clone()).or_insert_with(|| {
                groups.push((Vec::new(), 0));
                groups.len() - 1
            });
            groups[group].1 += usize::from(norns == 0);
            groups[group].0.push(event);
        }
        for (batch, without_norns) in groups {
            if self.live.publish(&batch[0].key, &batch) == 0 {
                self.unrouted.increment(without_norns as u64);
            }
        }
    }

    /// Closes a monit inbox: its SSE sessions get `event: done` (or `error`) and end. Sessions
    /// that connect later with an older `Last-Event-ID` replay up to the close and end too.
    pub fn close_inbox(&self, inbox: &str, outcome: InboxClose) {
        let kind = match outcome {
            InboxClose::Done => INBOX_DONE,
            InboxClose::Error => INBOX_ERROR,
        };
        self.publish(Event {
            id: Event::new_id(),
            key: inbox.to_owned(),
            kind: kind.to_owned(),
            source: "monit",
            time_ms: crate::event::now_ms(),
            content_type: "application/json".into(),
            payload: bytes::Bytes::from(
                serde_json::to_vec(&serde_json::json!({ "stream": inbox }))
                    .expect("JSON always encodes"),
            ),
            wrp: None,
        });
    }

    /// Live sessions and history.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Loads the stored history; call once at start-up, before anything is published.
    pub async fn load_history(&self) -> Result<usize, StoreError> {
        self.live.load(self.history_store.as_ref()).await
    }

    /// Commits history to the store every `live.history.commit_interval` until `stop`.
    pub async fn run_history_writer(self: Arc<Self>, stop: CancellationToken) {
        self.live
            .clone()
            .run_writer(self.history_store.clone(), stop)
            .await;
    }

    /// Offers `event` to its key's norns; returns how many there were.
    fn route(&self, event: &Arc<Event>) -> usize {
        self.router.for_each(&event.key, |subscription| {
            subscription.offer(event, &self.delivery);
        })
    }

    /// The expiry sweeper: removes expired norns from the index and the store.
    pub async fn run_expiry(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.norns.expiry_sweep);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            self.sweep_expired().await;
        }
    }

    /// Whether the NATS sink connection is up (`None`: not configured).
    pub fn nats_connected(&self) -> Option<bool> {
        self.delivery
            .nats
            .as_ref()
            .map(NatsConnection::is_connected)
    }

    /// Closes every queue and waits (at most `deadline`) for workers to deliver what they hold.
    /// Returns whether everything drained in time.
    pub async fn drain(&self, deadline: Duration) -> bool {
        for subscription in self.router.all(|_| true) {
            subscription.close();
        }
        self.delivery.tracker.close();
        tokio::time::timeout(deadline, self.delivery.tracker.wait())
            .await
            .is_ok()
    }
}
