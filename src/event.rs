//! The one envelope every source produces and every sink consumes.

use bytes::Bytes;
use serde::Serialize;
use uuid::Uuid;

use crate::wrp::WrpMessage;

/// An event, routed by `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Time-ordered (UUIDv7); also the SSE `id:` and the Standard Webhooks `webhook-id`.
    pub id: Uuid,
    /// The routing key: a canonical device id, endpoint id, access id, inbox id or tenant id.
    pub key: String,
    /// The event type (`device-status/online`, `endpoint.metadata.updated`, …).
    pub kind: String,
    /// The adapter that made it: `wrp`, `notifier`, `kaa`, `monit`.
    pub source: &'static str,
    /// Milliseconds since the epoch when brunnr took it in.
    pub time_ms: i64,
    pub content_type: String,
    pub payload: Bytes,
    /// The whole WRP message, for events that came as WRP (re-encoded exactly for WRP sinks).
    pub wrp: Option<WrpMessage>,
}

/// The JSON envelope of an event (live streams, NATS `json` format, filters).
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    pub id: String,
    pub key: &'a str,
    pub kind: &'a str,
    pub source: &'a str,
    pub time_ms: i64,
    pub content_type: &'a str,
    /// JSON when the content type is JSON (and the payload parses), else base64.
    pub payload: serde_json::Value,
}

impl Event {
    pub fn new_id() -> Uuid {
        Uuid::now_v7()
    }

    /// When brunnr took the event in, from its id (UUIDv7 keeps the milliseconds in its top 48
    /// bits).
    pub fn id_ms(&self) -> i64 {
        (self.id.as_u128() >> 80) as i64
    }

    pub fn is_json(&self) -> bool {
        is_json_content_type(&self.content_type)
    }

    /// The payload as JSON if it is JSON, else as base64 text.
    pub fn payload_value(&self) -> serde_json::Value {
        if self.is_json()
            && let Ok(value) = serde_json::from_slice(&self.payload)
        {
            return value;
        }
        use base64::Engine;
        serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&self.payload))
    }

    pub fn envelope(&self) -> Envelope<'_> {
        Envelope {
            id: self.id.to_string(),
            key: &self.key,
            kind: &self.kind,
            source: self.source,
            time_ms: self.time_ms,
            content_type: &self.content_type,
            payload: self.payload_value(),
        }
    }

    /// The event as WRP: its own message, or a SimpleEvent wrapping the envelope (non-WRP sources).
    pub fn to_wrp(&self) -> std::borrow::Cow<'_, WrpMessage> {
        if let Some(message) = &self.wrp {
            return std::borrow::Cow::Borrowed(message);
        }
        std::borrow::Cow::Owned(WrpMessage {
            msg_type: crate::wrp::SIMPLE_EVENT,
            source: self.source.to_string(),
            dest: format!("event:{}/{}", self.kind, self.key),
            transaction_uuid: Some(self.id.to_string()),
            content_type: Some("application/json".into()),
            payload: Some(Bytes::from(
                serde_json::to_vec(&self.envelope()).expect("an envelope always encodes"),
            )),
            ..Default::default()
        })
    }
}

/// Whether a content type is JSON (`application/json`, `…+json`), parameters and case aside.
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Every source's name: [`Event::source`] is one of these.
pub const SOURCES: [&str; 4] = ["wrp", "notifier", "kaa", "monit"];

/// The static name of a source read back from a store (`unknown` for one this build lacks).
pub fn source_name(name: &str) -> &'static str {
    SOURCES
        .iter()
        .find(|known| **known == name)
        .copied()
        .unwrap_or("unknown")
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}
