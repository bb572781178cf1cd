//! The hub: takes events from sources, routes each by key, and hands it to every subscription of
//! that key.
//!
//! ```text
//! source ──try_publish──► ingest queue ──router task──► Router (key → subscriptions)
//!                          (bounded: full = 429)            └─► Subscription::offer ──► worker ──► sink
//! ```
//! Nothing on this path waits on a destination: per-norn queues are bounded and overflow drops
//! (see `subscription`). The hub also owns the norn registry (`norns`): the store is written first,
//! then the index, so what the API answered is what survives a restart.

pub mod filter;
pub mod norns;
pub mod router;
pub mod subscription;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, DeliveryConfig};
use crate::event::Event;
use crate::metrics as m;
use crate::norn::Destination;
use crate::sink::Sink;
use crate::sink::address_policy::AddressPolicy;
use crate::sink::webhook::{WebhookClient, WebhookSink};
use crate::store::NornStore;
use router::Router;

/// What the delivery workers share.
pub struct DeliveryContext {
    pub config: DeliveryConfig,
    pub webhook: WebhookClient,
    /// Workers and failure notices, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

impl DeliveryContext {
    pub fn new(config: DeliveryConfig) -> DeliveryContext {
        let policy = AddressPolicy {
            allow_private: config.allow_private_destinations,
            allow_cidrs: config.allow_cidrs.clone(),
        };
        DeliveryContext {
            webhook: WebhookClient::new(policy, config.timeout),
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
        }
    }
}

/// The ingest queue is full; the source should answer 429.
#[derive(Debug, thiserror::Error)]
#[error("the hub is busy; try again")]
pub struct HubBusy;

/// Routes events to subscriptions and keeps the norn registry.
pub struct Hub {
    router: Router,
    ingest: mpsc::Sender<Arc<Event>>,
    delivery: Arc<DeliveryContext>,
    store: Arc<dyn NornStore>,
    config: Arc<Config>,
    /// Serialises norn writes, so the one-norn-per-(key, destination) rule holds.
    writes: tokio::sync::Mutex<()>,
}

/// The router task's end of the ingest queue.
pub struct IngestReceiver(mpsc::Receiver<Arc<Event>>);

impl Hub {
    pub fn new(config: Arc<Config>, store: Arc<dyn NornStore>) -> (Arc<Hub>, IngestReceiver) {
        let (ingest, receiver) = mpsc::channel(config.server.ingest_queue_size);
        let hub = Arc::new(Hub {
            router: Router::default(),
            ingest,
            delivery: Arc::new(DeliveryContext::new(config.delivery.clone())),
            store,
            config,
            writes: tokio::sync::Mutex::new(()),
        });
        (hub, IngestReceiver(receiver))
    }

    /// Accepts an event for routing, or refuses at once when the ingest queue is full.
    pub fn try_publish(&self, event: Event) -> Result<(), HubBusy> {
        self.ingest.try_send(Arc::new(event)).map_err(|_| HubBusy)
    }

    /// Hands `event` to each subscription of its key. Never waits.
    pub fn route(&self, event: &Arc<Event>) {
        let taken = self.router.for_each(&event.key, |subscription| {
            subscription.offer(event, &self.delivery);
        });
        if taken == 0 {
            metrics::counter!(m::EVENTS_UNROUTED).increment(1);
        }
    }

    /// The router task: routes ingested events until `shutdown`, then routes what is still queued.
    pub async fn run_router(
        self: Arc<Self>,
        mut ingest: IngestReceiver,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                biased;
                event = ingest.0.recv() => match event {
                    Some(event) => self.route(&event),
                    None => break,
                },
                _ = shutdown.cancelled() => {
                    ingest.0.close();
                    while let Some(event) = ingest.0.recv().await {
                        self.route(&event);
                    }
                    break;
                }
            }
        }
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
