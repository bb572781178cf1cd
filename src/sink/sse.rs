//! Server-Sent Events sessions: a live session as an SSE response body.
//!
//! The stream is the session: hyper polls it when the connection can take more, so a client that
//! stops reading stops being polled; its channel then fills and the hub closes it as a slow
//! consumer (it is taken off its keys at once, so nothing more is buffered for it) and the
//! response ends when it is next polled. Comments (`: ping`) every `live.heartbeat` keep proxies
//! from timing the connection out.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;

use crate::event::Event;
use crate::hub::live::{CloseReason, LiveSession, SessionEvent};
use crate::hub::{INBOX_DONE, INBOX_ERROR};
use crate::metrics as m;

const TRANSPORT: &str = "sse";

/// How events are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseFormat {
    /// monit: `id:`, `event: <kind>`, `data: <payload JSON>`; an inbox's `done`/`error` event
    /// ends the response.
    Monit,
    /// `/v1/stream`: `id:` and `data: <envelope JSON>` (a default `message` event, so that an
    /// `EventSource`'s `onmessage` sees it).
    Envelope,
}

impl SseFormat {
    /// The frame for `event`, and whether it ends the stream.
    fn frame(self, event: &Event) -> (SseEvent, bool) {
        let frame = SseEvent::default().id(event.id.to_string());
        match self {
            SseFormat::Monit => {
                let ends = event.kind == INBOX_DONE || event.kind == INBOX_ERROR;
                let data = serde_json::to_string(&event.payload_value()).expect("JSON encodes");
                (frame.event(&event.kind).data(data), ends)
            }
            SseFormat::Envelope => {
                let data = serde_json::to_string(&event.envelope()).expect("JSON encodes");
                (frame.data(data), false)
            }
        }
    }
}

struct State {
    session: LiveSession,
    queue: VecDeque<Arc<Event>>,
    format: SseFormat,
    ended: bool,
}

/// The SSE response for `session`: what it missed, then its events as they come.
pub fn response(
    mut session: LiveSession,
    format: SseFormat,
    heartbeat: Duration,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let missed = std::mem::take(&mut session.missed);
    metrics::counter!(m::LIVE_REPLAYED, "transport" => TRANSPORT).increment(missed.len() as u64);
    let state = State {
        session,
        queue: missed.into(),
        format,
        ended: false,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        loop {
            if state.ended {
                return None;
            }
            if let Some(event) = state.queue.pop_front() {
                let (frame, ends) = state.format.frame(&event);
                state.ended = ends;
                metrics::counter!(m::LIVE_FRAMES, "transport" => TRANSPORT).increment(1);
                return Some((Ok(frame), state));
            }
            match state.session.next().await {
                SessionEvent::Batch(batch) => state.queue.extend(batch.iter().cloned()),
                SessionEvent::Closed(reason) => {
                    if reason == CloseReason::SlowConsumer {
                        metrics::counter!(m::LIVE_SLOW_CLOSES, "transport" => TRANSPORT)
                            .increment(1);
                    }
                    return None;
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("ping"))
}
