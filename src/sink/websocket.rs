//! WebSocket sessions: writes a live session's replay and batches to one socket, pings it, and
//! closes it with a code that says why.
//!
//! One task per session (this function); the hub only `try_send`s to the session's bounded
//! channel. Close codes: 1000 "close" (`/drop_user`), 1001 (shutdown, or no pong within
//! `live.heartbeat_timeout`), 1013 "slow consumer" (its buffer filled).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use bytes::Bytes;
use futures::SinkExt;
use tokio::time::Instant;

use super::frames::Format;
use crate::hub::live::{CloseReason, LiveSession, SessionEvent};
use crate::metrics as m;

const TRANSPORT: &str = "websocket";
/// How long a closing session may take to send its close frame and hear the answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// `frames` as WebSocket text frames (the bytes are shared, not copied).
fn text_frames(frames: &[Bytes]) -> Vec<Message> {
    frames
        .iter()
        .map(|frame| {
            Message::Text(Utf8Bytes::try_from(frame.clone()).expect("frames are JSON, so UTF-8"))
        })
        .collect()
}

/// Heartbeat timings.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    pub interval: Duration,
    pub timeout: Duration,
}

enum Stop {
    /// brunnr closes: send a close frame.
    Close(u16, &'static str),
    /// The peer is gone or broke the protocol: nothing more to send.
    Gone,
}

fn close_for(reason: CloseReason) -> Stop {
    match reason {
        CloseReason::Dropped => Stop::Close(close_code::NORMAL, "close"),
        CloseReason::SlowConsumer => {
            metrics::counter!(m::LIVE_SLOW_CLOSES, "transport" => TRANSPORT).increment(1);
            Stop::Close(close_code::AGAIN, "slow consumer")
        }
        CloseReason::Shutdown => Stop::Close(close_code::AWAY, "server shutting down"),
    }
}

/// Runs a session on `socket` until it ends.
pub async fn run(
    mut socket: WebSocket,
    mut session: LiveSession,
    format: Format,
    heartbeat: Heartbeat,
) {
    let stop = serve(&mut socket, &mut session, format, heartbeat).await;
    // Off its keys before the goodbye, which may take up to CLOSE_TIMEOUT on a stalled socket.
    drop(session);
    if let Stop::Close(code, reason) = stop {
        close(&mut socket, code, reason).await;
    }
}

async fn serve(
    socket: &mut WebSocket,
    session: &mut LiveSession,
    format: Format,
    heartbeat: Heartbeat,
) -> Stop {
    let frames_sent = metrics::counter!(m::LIVE_FRAMES, "transport" => TRANSPORT);
    let missed = std::mem::take(&mut session.missed);
    if !missed.is_empty() {
        metrics::counter!(m::LIVE_REPLAYED, "transport" => TRANSPORT)
            .increment(missed.len() as u64);
        let frames = text_frames(&format.encode(&missed));
        frames_sent.increment(frames.len() as u64);
        if let Err(stop) = write(socket, session, frames, heartbeat.timeout).await {
            return stop;
        }
    }
    let mut ping =
        tokio::time::interval_at(Instant::now() + heartbeat.interval, heartbeat.interval);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            next = session.next() => match next {
                SessionEvent::Batch(batch) => {
                    let mut frames = text_frames(&batch.frames(format));
                    // What else is already queued goes out in the same write.
                    while frames.len() < MAX_FRAMES_PER_WRITE
                        && let Some(batch) = session.try_next()
                    {
                        frames.extend(text_frames(&batch.frames(format)));
                    }
                    frames_sent.increment(frames.len() as u64);
                    if let Err(stop) = write(socket, session, frames, heartbeat.timeout).await {
                        return stop;
                    }
                }
                SessionEvent::Closed(reason) => return close_for(reason),
            },
            message = socket.recv() => match message {
                // Pongs, and anything else the client says, show it is alive.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Stop::Gone,
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > heartbeat.timeout {
                    metrics::counter!(m::LIVE_PONG_TIMEOUTS, "transport" => TRANSPORT).increment(1);
                    return Stop::Close(close_code::AWAY, "no pong");
                }
                if let Err(stop) = write(socket, session, vec![Message::Ping(Default::default())], heartbeat.timeout).await {
                    return stop;
                }
            }
        }
    }
}

/// Frames gathered into one write when a session has several batches waiting.
const MAX_FRAMES_PER_WRITE: usize = 64;

/// Writes `frames` and flushes once, giving up as soon as the session is closed or the write
/// stalls for `stall`: a consumer that stopped reading must not hold its session open (the unsent
/// rest stays in the socket's buffer, ahead of the close frame).
async fn write(
    socket: &mut WebSocket,
    session: &LiveSession,
    frames: Vec<Message>,
    stall: Duration,
) -> Result<(), Stop> {
    let write = async {
        for frame in frames {
            socket.feed(frame).await?;
        }
        socket.flush().await
    };
    tokio::select! {
        written = tokio::time::timeout(stall, write) => match written {
            Ok(written) => written.map_err(|_| Stop::Gone),
            // Not one write went through in `stall`: the consumer stopped reading (the channel
            // filling would say the same, but only if events keep coming).
            Err(_) => Err(close_for(CloseReason::SlowConsumer)),
        },
        reason = session.closed() => Err(close_for(reason)),
    }
}

/// Sends a close frame and waits (briefly) for the peer's, so the close frame is read before the
/// connection goes.
pub async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        if socket.send(frame).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
