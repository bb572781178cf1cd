//! Server-Sent Events sessions: a live session as an SSE response body.
//!
//! The body is the session: hyper polls it when the connection can take more, so a client that
//! stops reading stops being polled; its channel then fills and the hub closes it as a slow
//! consumer (it is taken off its keys at once, so nothing more is buffered for it) and the
//! response ends when it is next polled. A `: ping` comment goes out after `live.heartbeat`
//! without frames, so proxies do not time the connection out. Frames are written as `frames`
//! encoded them, shared between sessions.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::frames::{Format, closes_inbox};
use crate::event::Event;
use crate::hub::live::{CloseReason, LiveSession, SessionEvent};
use crate::metrics as m;

const TRANSPORT: &str = "sse";
const PING: &[u8] = b": ping\n\n";

struct State {
    session: LiveSession,
    /// Frames to write, each with its event (to see whether it closes a monit inbox).
    queue: VecDeque<(Bytes, Arc<Event>)>,
    format: Format,
    heartbeat: Duration,
    ended: bool,
    /// Looked up once per session, not per frame.
    frames_sent: metrics::Counter,
}

impl State {
    fn enqueue(&mut self, frames: &[Bytes], events: &[Arc<Event>]) {
        self.queue
            .extend(frames.iter().cloned().zip(events.iter().cloned()));
    }

    /// The next chunk of the body, or `None` when the response ends.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.ended {
                return None;
            }
            if let Some((frame, event)) = self.queue.pop_front() {
                self.ended = self.format == Format::SseMonit && closes_inbox(&event);
                self.frames_sent.increment(1);
                return Some(frame);
            }
            let next = tokio::select! {
                next = self.session.next() => next,
                _ = tokio::time::sleep(self.heartbeat) => return Some(Bytes::from_static(PING)),
            };
            match next {
                SessionEvent::Batch(batch) => {
                    let frames = batch.frames(self.format);
                    self.enqueue(&frames, &batch.events);
                }
                SessionEvent::Closed(reason) => {
                    if reason == CloseReason::SlowConsumer {
                        metrics::counter!(m::LIVE_SLOW_CLOSES, "transport" => TRANSPORT)
                            .increment(1);
                    }
                    return None;
                }
            }
        }
    }
}

/// The SSE response for `session` in `format` (`SseEnvelope` or `SseMonit`): what it missed,
/// then its events as they come.
pub fn response(mut session: LiveSession, format: Format, heartbeat: Duration) -> Response {
    let missed = std::mem::take(&mut session.missed);
    metrics::counter!(m::LIVE_REPLAYED, "transport" => TRANSPORT).increment(missed.len() as u64);
    let mut state = State {
        session,
        queue: VecDeque::new(),
        format,
        heartbeat,
        ended: false,
        frames_sent: metrics::counter!(m::LIVE_FRAMES, "transport" => TRANSPORT),
    };
    state.enqueue(&format.encode(&missed), &missed);
    let body = futures::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), state))
    });
    (
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
