//! One norn's delivery: a bounded queue and one worker task that drains it into the norn's sink.
//!
//! The router only ever `try_send`s: a full queue drops the event, cuts the norn off for
//! `delivery.cut_off_period` (what is queued is discarded too) and sends one failure notice. The
//! worker is started by the first event and ends after `delivery.idle_timeout` without one, so an
//! idle norn costs no task and no queue.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Semaphore;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::DeliveryContext;
use super::filter::Filter;
use crate::event::{Event, now_ms};
use crate::metrics as m;
use crate::norn::{Destination, Norn};
use crate::sink::{DeliveryError, Sink};

/// A registered norn, ready to take events.
pub struct Subscription {
    pub norn: Norn,
    /// Boxed: most norns have none, and a compiled program is large.
    filter: Option<Box<Filter>>,
    /// The worker's queue, while a worker runs.
    queue: Mutex<Option<mpsc::Sender<Arc<Event>>>>,
    /// Events that arrived before this time are discarded (the norn is cut off until then).
    cut_off_until_ms: AtomicI64,
    /// Deleted or expired: whatever is queued is discarded.
    removed: AtomicBool,
}

/// What became of an offered event.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    Filtered,
    Dropped,
}

impl Subscription {
    pub fn new(norn: Norn, filter: Option<Filter>) -> Subscription {
        Subscription {
            norn,
            filter: filter.map(Box::new),
            queue: Mutex::new(None),
            cut_off_until_ms: AtomicI64::new(0),
            removed: AtomicBool::new(false),
        }
    }

    fn sink_name(&self) -> &'static str {
        self.norn.destination.sink_name()
    }

    /// Queues `event` without ever waiting.
    pub fn offer(self: &Arc<Self>, event: &Arc<Event>, ctx: &Arc<DeliveryContext>) -> Offer {
        let now = now_ms();
        if self.norn.is_expired(now) || self.removed.load(Ordering::Relaxed) {
            return Offer::Filtered;
        }
        if let Some(filter) = &self.filter
            && !filter.matches(event)
        {
            return Offer::Filtered;
        }
        if now < self.cut_off_until_ms.load(Ordering::Relaxed) {
            metrics::counter!(m::DROPPED, "sink" => self.sink_name(), "reason" => "cut_off")
                .increment(1);
            return Offer::Dropped;
        }
        let mut queue = self.queue.lock().expect("queue lock");
        let sender = match queue.as_ref() {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                let (sender, receiver) = mpsc::channel(ctx.config.queue_size);
                ctx.tracker.spawn(self.clone().run(receiver, ctx.clone()));
                queue.insert(sender)
            }
        };
        match sender.try_send(event.clone()) {
            Ok(()) => Offer::Queued,
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => {
                let queued = sender.max_capacity() - sender.capacity();
                drop(queue);
                metrics::counter!(m::DROPPED, "sink" => self.sink_name(), "reason" => "queue_full")
                    .increment(1);
                self.cut_off(now, queued, ctx);
                Offer::Dropped
            }
        }
    }

    fn cut_off(self: &Arc<Self>, now: i64, queued: usize, ctx: &Arc<DeliveryContext>) {
        let until = now + ctx.config.cut_off_period.as_millis() as i64;
        let previous = self.cut_off_until_ms.swap(until, Ordering::Relaxed);
        if previous > now {
            return; // Already cut off: one notice per cut-off.
        }
        tracing::warn!(norn = %self.norn.id, queued, "Norn's queue is full; cutting it off.");
        if let Destination::Http(http) = &self.norn.destination
            && let Some(failure_url) = http.failure_url.clone()
        {
            let notice = serde_json::json!({
                "text": format!(
                    "brunnr dropped events for this norn: its queue of {} events was full. \
                     Deliveries stop for {} and resume after that.",
                    ctx.config.queue_size,
                    crate::duration::format_duration(ctx.config.cut_off_period)
                ),
                "norn": self.norn.view(),
                "dropped": queued + 1,
                "cut_off_period": crate::duration::format_duration(ctx.config.cut_off_period),
                "queue_size": ctx.config.queue_size,
            });
            let (client, secret) = (ctx.webhook.clone(), http.secret.clone());
            ctx.tracker.spawn(async move {
                let body = serde_json::to_vec(&notice).expect("a notice always encodes");
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert(
                    reqwest::header::CONTENT_TYPE,
                    reqwest::header::HeaderValue::from_static("application/json"),
                );
                let id = Event::new_id().to_string();
                let outcome = match client
                    .post(&failure_url, secret.as_deref(), &id, headers, body)
                    .await
                {
                    Ok(()) => "success",
                    Err(error) => {
                        tracing::warn!(%error, "Failure notice not delivered.");
                        "failure"
                    }
                };
                metrics::counter!(m::FAILURE_NOTICES, "outcome" => outcome).increment(1);
            });
        }
    }

    /// Stops taking events; the worker delivers what is queued, then ends (an update replaced it,
    /// or brunnr is shutting down).
    pub fn close(&self) {
        self.queue.lock().expect("queue lock").take();
    }

    /// Deleted or expired: what is queued is discarded.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Relaxed);
        self.close();
    }

    /// Ends the worker if nothing is queued; `false` if events arrived meanwhile.
    fn retire_if_idle(&self, receiver: &mpsc::Receiver<Arc<Event>>) -> bool {
        let mut queue = self.queue.lock().expect("queue lock");
        if receiver.is_empty() {
            queue.take();
            true
        } else {
            false
        }
    }

    /// Whether `event` must be discarded rather than delivered.
    fn discards(&self, event: &Event) -> Option<&'static str> {
        if self.removed.load(Ordering::Relaxed) {
            Some("removed")
        } else if self.norn.is_expired(now_ms()) {
            Some("expired")
        } else if event.time_ms < self.cut_off_until_ms.load(Ordering::Relaxed) {
            Some("cut_off")
        } else {
            None
        }
    }

    /// The worker: drains the queue into the sink, in order unless `max_in_flight` > 1.
    async fn run(
        self: Arc<Self>,
        mut receiver: mpsc::Receiver<Arc<Event>>,
        ctx: Arc<DeliveryContext>,
    ) {
        let sink: Arc<dyn Sink> = ctx.sink_for(&self.norn.destination);
        let max_batch = sink.max_batch();
        let in_flight = Arc::new(Semaphore::new(ctx.config.max_in_flight));
        loop {
            // A timer only when the queue is empty: under load the next event is usually there.
            let first = match receiver.try_recv() {
                Ok(event) => event,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    event = receiver.recv() => match event {
                        Some(event) => event,
                        None => break,
                    },
                    _ = tokio::time::sleep(ctx.config.idle_timeout) => {
                        if self.retire_if_idle(&receiver) { break } else { continue }
                    }
                },
            };
            let mut batch = Vec::with_capacity(max_batch);
            let mut next = Some(first);
            while let Some(event) = next.take() {
                match self.discards(&event) {
                    Some(reason) => {
                        metrics::counter!(m::DROPPED, "sink" => sink.name(), "reason" => reason)
                            .increment(1)
                    }
                    None => batch.push(event),
                }
                if batch.len() < max_batch {
                    next = receiver.try_recv().ok();
                }
            }
            if batch.is_empty() {
                continue;
            }
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            if ctx.config.max_in_flight == 1 {
                self.deliver(sink.as_ref(), &batch, &ctx).await;
                drop(permit);
            } else {
                let (this, sink, ctx2) = (self.clone(), sink.clone(), ctx.clone());
                ctx.tracker.spawn(async move {
                    this.deliver(sink.as_ref(), &batch, &ctx2).await;
                    drop(permit);
                });
            }
        }
    }

    /// One batch, with retries for what is worth retrying (the whole batch, or the part a sink
    /// says failed for a reason that is not the sender's).
    async fn deliver(&self, sink: &dyn Sink, batch: &[Arc<Event>], ctx: &DeliveryContext) {
        let name = sink.name();
        let mut pending: Vec<Arc<Event>> = batch.to_vec();
        let mut attempt = 0;
        loop {
            let result = sink.deliver(&pending).await;
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics::counter!(m::SINK_CALLS, "sink" => name, "outcome" => outcome).increment(1);
            let (retry, failed, retry_after, reason) = match result {
                Ok(()) => (Vec::new(), Vec::new(), None, None),
                Err(DeliveryError::Retryable {
                    reason,
                    retry_after,
                }) => (
                    (0..pending.len()).collect(),
                    Vec::new(),
                    retry_after,
                    Some(reason),
                ),
                Err(DeliveryError::Permanent { reason }) => {
                    (Vec::new(), (0..pending.len()).collect(), None, Some(reason))
                }
                Err(DeliveryError::Partial {
                    retry,
                    failed,
                    reason,
                }) => (retry, failed, None, Some(reason)),
            };
            let now = now_ms();
            let mut delivered = 0;
            for (index, event) in pending.iter().enumerate() {
                if !retry.contains(&index) && !failed.contains(&index) {
                    delivered += 1;
                    metrics::histogram!(m::DELIVERY_DURATION, "sink" => name)
                        .record((now - event.time_ms).max(0) as f64 / 1000.0);
                }
            }
            metrics::counter!(m::DELIVERIES, "sink" => name, "outcome" => "success")
                .increment(delivered);
            let reason = reason.unwrap_or_default();
            let mut gave_up = failed.len();
            if !retry.is_empty()
                && (attempt >= ctx.config.retries || self.removed.load(Ordering::Relaxed))
            {
                gave_up += retry.len();
            }
            if gave_up > 0 {
                metrics::counter!(m::DELIVERIES, "sink" => name, "outcome" => "failure")
                    .increment(gave_up as u64);
                tracing::info!(norn = %self.norn.id, %reason, events = gave_up, attempts = attempt + 1, "Delivery failed.");
            }
            if retry.is_empty() || gave_up > failed.len() {
                return;
            }
            metrics::counter!(m::DELIVERIES, "sink" => name, "outcome" => "retry")
                .increment(retry.len() as u64);
            let wait = retry_after
                .unwrap_or_else(|| backoff(ctx.config.backoff, attempt))
                .min(ctx.config.max_backoff);
            tracing::debug!(norn = %self.norn.id, %reason, ?wait, attempt, "Delivery will be retried.");
            tokio::time::sleep(wait).await;
            pending = retry
                .iter()
                .filter_map(|&index| pending.get(index).cloned())
                .collect();
            attempt += 1;
        }
    }
}

/// Exponential backoff with jitter: between half and all of `base * 2^attempt`.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let full = base.saturating_mul(1u32 << attempt.min(16));
    let half = full / 2;
    half + Duration::from_nanos(
        rand::rng().random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter() {
        let base = Duration::from_millis(100);
        for attempt in 0..4 {
            let wait = backoff(base, attempt);
            let full = base * (1 << attempt);
            assert!(
                wait >= full / 2 && wait <= full,
                "{wait:?} for attempt {attempt}"
            );
        }
    }
}
