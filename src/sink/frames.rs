//! The wire formats of live sessions. A batch is encoded once per format, by the first session
//! that sends it, and the bytes are shared by every other session of that format (fan-out to a
//! thousand sessions is one JSON encoding, not a thousand).

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::event::Event;
use crate::hub::{INBOX_DONE, INBOX_ERROR};

/// How a live session frames events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// notifier WebSocket: one text frame per batch, a JSON array of
    /// `{accessid, created_at, payload}`.
    Notifier,
    /// `/v1/stream` WebSocket: one text frame per event, its JSON envelope.
    Envelope,
    /// `/v1/stream` SSE: `id:` and `data: <envelope>` per event (no `event:` line, so that an
    /// `EventSource`'s `onmessage` sees it).
    SseEnvelope,
    /// monit SSE: `id:`, `event: <kind>`, `data: <payload JSON>` per event.
    SseMonit,
}

const FORMATS: usize = 4;

impl Format {
    fn slot(self) -> usize {
        self as usize
    }

    /// Encodes `events`: one frame per batch (notifier) or one per event (the others).
    pub fn encode(self, events: &[Arc<Event>]) -> Arc<[Bytes]> {
        match self {
            Format::Notifier => {
                let batch: Vec<NotifierEvent> = events.iter().map(|e| notifier_event(e)).collect();
                [json(&batch)].into()
            }
            Format::Envelope => events.iter().map(|e| json(&e.envelope())).collect(),
            Format::SseEnvelope => events
                .iter()
                .map(|e| sse_frame(e, None, &json(&e.envelope())))
                .collect(),
            Format::SseMonit => events
                .iter()
                .map(|e| sse_frame(e, Some(&e.kind), &json(&e.payload_value())))
                .collect(),
        }
    }
}

/// Whether `event` closes a monit inbox (its SSE response ends after it).
pub fn closes_inbox(event: &Event) -> bool {
    event.source == "monit" && (event.kind == INBOX_DONE || event.kind == INBOX_ERROR)
}

/// The events of one publish for one key, with their encodings as sessions ask for them.
pub struct Batch {
    pub events: Box<[Arc<Event>]>,
    encoded: [OnceLock<Arc<[Bytes]>>; FORMATS],
}

impl Batch {
    pub fn new(events: &[Arc<Event>]) -> Batch {
        Batch {
            events: events.into(),
            encoded: Default::default(),
        }
    }

    /// The batch in `format`, encoded by the first caller.
    pub fn frames(&self, format: Format) -> Arc<[Bytes]> {
        self.encoded[format.slot()]
            .get_or_init(|| format.encode(&self.events))
            .clone()
    }
}

/// An event as the notifier sent it.
#[derive(Serialize)]
struct NotifierEvent<'a> {
    accessid: &'a str,
    created_at: i64,
    /// Text stays text; JSON stays JSON; other bytes are base64.
    payload: serde_json::Value,
}

fn notifier_event(event: &Event) -> NotifierEvent<'_> {
    let payload = match std::str::from_utf8(&event.payload) {
        Ok(text) if !event.is_json() => serde_json::Value::String(text.to_owned()),
        _ => event.payload_value(),
    };
    NotifierEvent {
        accessid: &event.key,
        created_at: event.time_ms,
        payload,
    }
}

fn json(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("frames always encode"))
}

/// One SSE frame. `data` is compact JSON, so it has no line breaks; `kind` comes from sources
/// and could, so any line break in it is replaced.
fn sse_frame(event: &Event, kind: Option<&str>, data: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(64 + data.len());
    frame.put_slice(b"id: ");
    frame.put_slice(event.id.to_string().as_bytes());
    if let Some(kind) = kind {
        frame.put_slice(b"\nevent: ");
        frame.put_slice(kind.replace(['\r', '\n'], " ").as_bytes());
    }
    frame.put_slice(b"\ndata: ");
    frame.put_slice(data);
    frame.put_slice(b"\n\n");
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, content_type: &str, payload: &'static [u8]) -> Arc<Event> {
        Arc::new(Event {
            id: Event::new_id(),
            key: "k1".into(),
            kind: kind.into(),
            source: "monit",
            time_ms: 7,
            content_type: content_type.into(),
            payload: Bytes::from_static(payload),
            wrp: None,
        })
    }

    #[test]
    fn each_format_is_encoded_once_and_shared() {
        let batch = Batch::new(&[
            event("monitor.user", "application/json", br#"{"body":"b"}"#),
            event("x", "text/plain", b"hi"),
        ]);
        let notifier = batch.frames(Format::Notifier);
        assert_eq!(
            notifier[0],
            Bytes::from_static(br#"[{"accessid":"k1","created_at":7,"payload":{"body":"b"}},{"accessid":"k1","created_at":7,"payload":"hi"}]"#)
        );
        assert!(Arc::ptr_eq(&notifier, &batch.frames(Format::Notifier)));
        let monit = batch.frames(Format::SseMonit);
        let id = batch.events[0].id;
        assert_eq!(
            monit[0],
            Bytes::from(format!(
                "id: {id}\nevent: monitor.user\ndata: {{\"body\":\"b\"}}\n\n"
            ))
        );
        assert_eq!(batch.frames(Format::Envelope).len(), 2);
        let sse = batch.frames(Format::SseEnvelope);
        assert!(sse[1].starts_with(b"id: ") && !sse[1].windows(7).any(|w| w == b"event: "));
    }
}
