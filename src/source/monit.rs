//! The monit source's decoding: `monitor.user` messages become events of an inbox, and
//! `service.*` messages open and close inboxes (ernest's FSM publishes both on NATS).
//!
//! `monitor.user` is `{"id", "service", "messages": [{"body", "level"}]}`: one event per message,
//! keyed by the last `-` part of `service` (the monitor id the user passed), else by `id`.
//! `service.create|delete` open an inbox; `service.{create,delete,import}.{done,error}` close it
//! (the caller waits a second first, as the original did, so late messages still arrive).

use bytes::Bytes;
use serde::Deserialize;

use crate::event::Event;
use crate::hub::InboxClose;

pub const SOURCE: &str = "monit";
pub const KIND: &str = "monitor.user";

/// What a monit message means.
#[derive(Debug, PartialEq)]
pub enum MonitMessage {
    /// Messages for an inbox's SSE clients.
    Events(Vec<Event>),
    /// An inbox opened (`service.create`, `service.delete`).
    Opened(String),
    /// An inbox closed (`service.*.done`, `service.*.error`).
    Closed(String, InboxClose),
}

/// Why a monit message was not taken.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MonitError {
    #[error("not a monit subject: {0}")]
    UnknownSubject(String),
    #[error("not valid monit JSON: {0}")]
    Invalid(String),
    #[error("no inbox id (service or id)")]
    NoInbox,
}

impl MonitError {
    /// A short reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            MonitError::UnknownSubject(_) => "unknown_subject",
            MonitError::Invalid(_) => "invalid",
            MonitError::NoInbox => "no_key",
        }
    }
}

#[derive(Deserialize)]
struct UserMessages {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    service: Option<String>,
    messages: Vec<UserMessage>,
}

#[derive(Deserialize, serde::Serialize)]
struct UserMessage {
    body: String,
    level: String,
}

#[derive(Deserialize)]
struct ServiceMessage {
    id: String,
}

/// The subjects the monit source subscribes to: exactly these, so that the FSM's other
/// `service.…` subjects are not taken (and refused) at all.
pub const SUBJECTS: [&str; 9] = [
    "monitor.user",
    "service.create",
    "service.delete",
    "service.create.done",
    "service.create.error",
    "service.delete.done",
    "service.delete.error",
    "service.import.done",
    "service.import.error",
];

/// Decodes one message received on `subject`.
pub fn decode(subject: &str, message: &[u8], now_ms: i64) -> Result<MonitMessage, MonitError> {
    let invalid = |error: serde_json::Error| MonitError::Invalid(error.to_string());
    match subject.split('.').collect::<Vec<_>>()[..] {
        ["monitor", "user"] => {
            let user: UserMessages = serde_json::from_slice(message).map_err(invalid)?;
            let inbox = match (user.service.as_deref(), user.id.as_deref()) {
                (Some(service), _) if !service.is_empty() => {
                    service.rsplit('-').next().unwrap_or(service)
                }
                (_, Some(id)) if !id.is_empty() => id,
                _ => return Err(MonitError::NoInbox),
            };
            if inbox.is_empty() {
                return Err(MonitError::NoInbox);
            }
            Ok(MonitMessage::Events(
                user.messages
                    .iter()
                    .map(|message| Event {
                        id: Event::new_id(),
                        key: inbox.to_owned(),
                        kind: KIND.into(),
                        source: SOURCE,
                        time_ms: now_ms,
                        content_type: "application/json".into(),
                        payload: Bytes::from(
                            serde_json::to_vec(message).expect("JSON always encodes"),
                        ),
                        wrp: None,
                    })
                    .collect(),
            ))
        }
        ["service", "create" | "delete"] => {
            let service: ServiceMessage = serde_json::from_slice(message).map_err(invalid)?;
            Ok(MonitMessage::Opened(non_empty(service.id)?))
        }
        [
            "service",
            "create" | "delete" | "import",
            outcome @ ("done" | "error"),
        ] => {
            let service: ServiceMessage = serde_json::from_slice(message).map_err(invalid)?;
            let outcome = if outcome == "done" {
                InboxClose::Done
            } else {
                InboxClose::Error
            };
            Ok(MonitMessage::Closed(non_empty(service.id)?, outcome))
        }
        _ => Err(MonitError::UnknownSubject(subject.to_owned())),
    }
}

fn non_empty(id: String) -> Result<String, MonitError> {
    if id.is_empty() {
        Err(MonitError::NoInbox)
    } else {
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_messages_go_to_the_inbox_named_by_the_service() {
        let message = br#"{"id": "svc-build", "service": "my-service-abc123",
            "messages": [{"body": "creating network", "level": "INFO"}, {"body": "done", "level": "SUCCESS"}]}"#;
        let MonitMessage::Events(events) = decode("monitor.user", message, 5).unwrap() else {
            panic!("events expected");
        };
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].key, "abc123");
        assert_eq!(events[0].kind, "monitor.user");
        assert_eq!(
            &events[1].payload[..],
            br#"{"body":"done","level":"SUCCESS"}"#
        );
        // No service: the id.
        let MonitMessage::Events(events) = decode(
            "monitor.user",
            br#"{"id": "x1", "messages": [{"body": "b", "level": "l"}]}"#,
            5,
        )
        .unwrap() else {
            panic!("events expected");
        };
        assert_eq!(events[0].key, "x1");
    }

    #[test]
    fn service_subjects_open_and_close_inboxes() {
        assert_eq!(
            decode("service.create", br#"{"id": "abc"}"#, 0),
            Ok(MonitMessage::Opened("abc".into()))
        );
        assert_eq!(
            decode("service.import.done", br#"{"id": "abc"}"#, 0),
            Ok(MonitMessage::Closed("abc".into(), InboxClose::Done))
        );
        assert_eq!(
            decode("service.delete.error", br#"{"id": "abc", "error": "x"}"#, 0),
            Ok(MonitMessage::Closed("abc".into(), InboxClose::Error))
        );
        assert!(matches!(
            decode("service.create.started", b"{}", 0),
            Err(MonitError::UnknownSubject(_))
        ));
        assert!(matches!(
            decode("monitor.user", b"not json", 0),
            Err(MonitError::Invalid(_))
        ));
        assert_eq!(
            decode("monitor.user", br#"{"messages": []}"#, 0),
            Err(MonitError::NoInbox)
        );
    }
}
