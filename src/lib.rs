//! brunnr: an event fan-out hub. Events come in from sources, are routed by key, and go out to
//! every current subscription for that key.
//!
//! # Layout
//! ```text
//!  source/ ──► Event ──► hub/ ──► subscriptions ──► sink/
//!  wrp (POST /events)     router (key → norns)        webhook, SQS, NATS
//!  notifier (/push_events) live (key → sessions) ──►   WebSocket, SSE
//!                         history ◄──────────────────► store/ (embedded redb)
//!                         norns (registry) ◄─────────► store/
//!  api/: the HTTP API over all of it; config, auth, metrics beside.
//! ```
//! [`run`] is the one place where the parts are wired together.

pub mod api;
pub mod auth;
pub mod bench;
pub mod client;
pub mod config;
pub mod duration;
pub mod event;
pub mod hub;
pub mod metrics;
pub mod norn;
pub mod sink;
pub mod source;
pub mod store;
pub mod wrp;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::Hub;
use crate::store::StoreError;
use crate::store::embedded::EmbeddedStore;

/// Why brunnr could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot set up the NATS connection: {0}")]
    Nats(String),
    #[error("serving HTTP failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// A brunnr whose store is open and loaded, about to serve.
pub struct Server {
    config: Arc<Config>,
    hub: Arc<Hub>,
    listener: TcpListener,
    nats_source: Option<source::nats::NatsSource>,
    caduceus: Option<Arc<source::caduceus::Registration>>,
    /// Stops the sources that run beside the HTTP API.
    sources_stop: CancellationToken,
}

impl Server {
    /// Opens the store, connects what must be connected and loads norns and history.
    pub async fn start(config: Config, listener: TcpListener) -> Result<Server, RunError> {
        // The recorder first: what loading sets (brunnr_norns) must not go to the no-op one.
        crate::metrics::prometheus();
        let config = Arc::new(config);
        let store = Arc::new(EmbeddedStore::open(&config.store.path)?);
        let nats = match config.nats_sink_url() {
            Some(url) => Some(
                sink::nats::NatsConnection::connect(
                    url,
                    config.sinks.nats.buffer,
                    config.delivery.timeout,
                )
                .await
                .map_err(|error| RunError::Nats(error.to_string()))?,
            ),
            None => None,
        };
        let hub = Hub::new(config.clone(), store.clone(), store, nats);
        let norns = hub.load_norns().await?;
        let history = hub.load_history().await?;
        tracing::info!(norns, history, path = %config.store.path.display(), "Store opened.");
        let sources_stop = CancellationToken::new();
        let nats_source = match &config.sources.nats {
            Some(nats) => Some(
                source::nats::NatsSource::start(nats, hub.clone(), sources_stop.clone())
                    .await
                    .map_err(RunError::Nats)?,
            ),
            None => None,
        };
        let caduceus = config
            .sources
            .caduceus
            .as_ref()
            .filter(|caduceus| !caduceus.registration_url.is_empty())
            .map(|caduceus| source::caduceus::start(caduceus.clone(), sources_stop.clone()));
        Ok(Server {
            config,
            hub,
            listener,
            nats_source,
            caduceus,
            sources_stop,
        })
    }

    /// The hub, for sources that run beside the HTTP API (and tests).
    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, closes live sessions, delivers
    /// what is in flight (up to `server.drain_timeout`), saves history and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RunError> {
        let Server {
            config,
            hub,
            listener,
            nats_source,
            caduceus,
            sources_stop,
        } = self;
        let stop = CancellationToken::new();
        let expiry_task = tokio::spawn(hub.clone().run_expiry(stop.clone()));
        let history_stop = CancellationToken::new();
        let history_task = tokio::spawn(hub.clone().run_history_writer(history_stop.clone()));

        let ready = Arc::new(AtomicBool::new(true));
        let state = AppState {
            hub: hub.clone(),
            auth: Arc::new(Authenticator::new(config.auth.clone())),
            config: config.clone(),
            metrics: crate::metrics::prometheus(),
            ready: ready.clone(),
            openapi: Arc::new(api::openapi_json()),
            nats_source,
            caduceus,
        };
        let address = listener.local_addr()?;
        tracing::info!(%address, auth = state.auth.is_enabled(), "brunnr is listening.");
        let http_stop = stop.clone();
        let live = hub.live().clone();
        let stopping = Arc::new(tokio::sync::Notify::new());
        let stopping_signal = stopping.clone();
        let serve = axum::serve(listener, api::app(state)).with_graceful_shutdown(async move {
            shutdown.await;
            ready.store(false, Ordering::Relaxed);
            http_stop.cancel();
            // Live sessions end now: SSE responses would otherwise hold the server open.
            live.begin_shutdown();
            stopping_signal.notify_one();
            tracing::info!("Shutting down: no new connections.");
        });
        // Connections get `server.drain_timeout` to finish; one that cannot (an SSE client that
        // stopped reading is never polled again) is dropped then.
        let drain_timeout = config.server.drain_timeout;
        tokio::select! {
            served = serve.into_future() => served?,
            _ = async {
                stopping.notified().await;
                tokio::time::sleep(drain_timeout).await;
            } => tracing::warn!(timeout = ?drain_timeout, "Connections still open after the drain timeout were dropped."),
        }

        stop.cancel();
        sources_stop.cancel();
        let _ = expiry_task.await;
        hub.live().close_all(LIVE_GOODBYE).await;
        if hub.drain(config.server.drain_timeout).await {
            tracing::info!("Queues drained.");
        } else {
            tracing::warn!(timeout = ?config.server.drain_timeout, "Drain timed out; undelivered events were dropped.");
        }
        history_stop.cancel();
        let _ = history_task.await;
        Ok(())
    }
}

/// How long live sessions have to send their close frames at shutdown.
const LIVE_GOODBYE: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs brunnr on `listener` until `shutdown` completes (see [`Server::run`]).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    Server::start(config, listener).await?.run(shutdown).await
}
