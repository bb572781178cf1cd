//! The Kaa source's decoding: 9/ELCE, 15/EME and 23/AIP messages, Avro binary records of the
//! RFCs' schemas (vendored in `docs/kaa/`), turned into events.
//!
//! The subject says which record a message is (`kaa.v1.events.<originator>.<kind>`); the kind is
//! the event's kind. Connectivity events and traffic reports name many endpoints: each endpoint
//! gets an event of its own whose payload names only that endpoint, so a subscriber to one
//! endpoint never sees another's. AIP events are keyed by tenant. A message may be a bare record
//! or the Avro single-object encoding (`C3 01` + the schema's 8-byte Rabin fingerprint).

use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::types::Value;
use bytes::Bytes;
use serde_json::{Map, Value as Json};

use crate::event::Event;

pub const SOURCE: &str = "kaa";
const SUBJECT_PREFIX: &str = "kaa.v1.events.";

/// The records brunnr decodes, one per schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Connected,
    Disconnected,
    Registered,
    Unregistered,
    AppVersionUpdated,
    TrafficReport,
    MetadataUpdated,
    AutomationInvocation,
}

const RECORDS: [Record; 8] = [
    Record::Connected,
    Record::Disconnected,
    Record::Registered,
    Record::Unregistered,
    Record::AppVersionUpdated,
    Record::TrafficReport,
    Record::MetadataUpdated,
    Record::AutomationInvocation,
];

impl Record {
    /// The record a message on `kind` (the subject after the originator) carries.
    fn for_kind(kind: &str) -> Option<Record> {
        Some(match kind {
            "endpoint.connectivity.connected" => Record::Connected,
            "endpoint.connectivity.disconnected" => Record::Disconnected,
            "endpoint.lifecycle.registered" => Record::Registered,
            "endpoint.lifecycle.unregistered" => Record::Unregistered,
            "endpoint.lifecycle.appversion-updated" => Record::AppVersionUpdated,
            "endpoint.traffic-reporting.payload" => Record::TrafficReport,
            "endpoint.metadata.updated" => Record::MetadataUpdated,
            _ => match kind.strip_prefix("service.automation.") {
                Some(kind) if !kind.is_empty() && !kind.contains('.') => {
                    Record::AutomationInvocation
                }
                _ => return None,
            },
        })
    }

    fn schema_text(self) -> &'static str {
        match self {
            Record::Connected => include_str!("../../docs/kaa/0009-ep-connected.avsc"),
            Record::Disconnected => include_str!("../../docs/kaa/0009-ep-disconnected.avsc"),
            Record::Registered => include_str!("../../docs/kaa/0009-ep-registered.avsc"),
            Record::Unregistered => include_str!("../../docs/kaa/0009-ep-unregistered.avsc"),
            Record::AppVersionUpdated => {
                include_str!("../../docs/kaa/0009-ep-appversion-updated.avsc")
            }
            Record::TrafficReport => include_str!("../../docs/kaa/0009-ep-traffic-stats.avsc"),
            Record::MetadataUpdated => {
                include_str!("../../docs/kaa/0015-ep-metadata-updated.avsc")
            }
            Record::AutomationInvocation => {
                include_str!("../../docs/kaa/0023-automation-invocation.avsc")
            }
        }
    }

    /// The parsed schema and its single-object header.
    pub fn schema(self) -> &'static (Schema, [u8; 10]) {
        static SCHEMAS: OnceLock<Vec<(Schema, [u8; 10])>> = OnceLock::new();
        let schemas = SCHEMAS.get_or_init(|| {
            RECORDS
                .iter()
                .map(|record| {
                    let schema = Schema::parse_str(record.schema_text())
                        .expect("the vendored Kaa schemas parse");
                    let fingerprint = schema.fingerprint::<Rabin>().bytes;
                    let mut header = [0u8; 10];
                    header[0] = 0xC3;
                    header[1] = 0x01;
                    header[2..].copy_from_slice(&fingerprint[..8]);
                    (schema, header)
                })
                .collect()
        });
        &schemas[RECORDS.iter().position(|r| *r == self).expect("listed")]
    }
}

/// Why a Kaa message was not taken.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KaaError {
    #[error("no Kaa record is known for subject {0}")]
    UnknownSubject(String),
    #[error("not a {record:?} record: {reason}")]
    Undecodable { record: Record, reason: String },
    #[error("expired {0} ms ago")]
    Expired(i64),
    #[error("a {0:?} record without the endpoint or tenant it is about")]
    NoKey(Record),
}

impl KaaError {
    /// A short reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            KaaError::UnknownSubject(_) => "unknown_subject",
            KaaError::Undecodable { .. } => "undecodable",
            KaaError::Expired(_) => "expired",
            KaaError::NoKey(_) => "no_key",
        }
    }
}

/// The kind of a Kaa subject (`endpoint.metadata.updated`), if it is one brunnr decodes.
pub fn kind_of(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix(SUBJECT_PREFIX)?;
    let (_originator, kind) = rest.split_once('.')?;
    Record::for_kind(kind).map(|_| kind)
}

/// Decodes one message received on `subject` into its events.
pub fn decode(subject: &str, message: &[u8], now_ms: i64) -> Result<Vec<Event>, KaaError> {
    let kind = kind_of(subject).ok_or_else(|| KaaError::UnknownSubject(subject.to_owned()))?;
    let record = Record::for_kind(kind).expect("kind_of checked it");
    let (schema, header) = record.schema();
    let mut body = match message.strip_prefix(&header[..]) {
        Some(body) => body,
        None => message,
    };
    let undecodable = |reason: String| KaaError::Undecodable { record, reason };
    let value = apache_avro::from_avro_datum(schema, &mut body, None)
        .map_err(|error| undecodable(error.to_string()))?;
    if !body.is_empty() {
        return Err(undecodable(format!(
            "{} bytes after the record",
            body.len()
        )));
    }
    let Json::Object(fields) = to_json(value) else {
        return Err(undecodable("not a record".into()));
    };
    let field = |name: &str| fields.get(name).and_then(Json::as_i64).unwrap_or(0);
    let (timestamp, timeout) = (field("timestamp"), field("timeout"));
    if timeout > 0 && timestamp.saturating_add(timeout) < now_ms {
        return Err(KaaError::Expired(now_ms - timestamp - timeout));
    }
    let event = |key: String, payload: &Map<String, Json>| Event {
        id: Event::new_id(),
        key,
        kind: kind.to_owned(),
        source: SOURCE,
        time_ms: now_ms,
        content_type: "application/json".into(),
        payload: Bytes::from(serde_json::to_vec(payload).expect("JSON always encodes")),
        wrp: None,
    };
    let string = |name: &str| {
        fields
            .get(name)
            .and_then(Json::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or(KaaError::NoKey(record))
    };
    match record {
        Record::Connected | Record::Disconnected => {
            let endpoints = fields
                .get("endpoints")
                .and_then(Json::as_object)
                .cloned()
                .unwrap_or_default();
            Ok(endpoints
                .into_iter()
                .map(|(endpoint, version)| {
                    let mut payload = fields.clone();
                    payload.insert(
                        "endpoints".into(),
                        Json::Object(Map::from_iter([(endpoint.clone(), version)])),
                    );
                    event(endpoint, &payload)
                })
                .collect())
        }
        Record::TrafficReport => {
            let mut events = Vec::new();
            let tenants = fields.get("tenantTrafficStats").and_then(Json::as_object);
            for (tenant, apps) in tenants.into_iter().flatten() {
                for (app, endpoints) in apps.as_object().into_iter().flatten() {
                    for (endpoint, stats) in endpoints.as_object().into_iter().flatten() {
                        let mut payload = fields.clone();
                        let narrowed = Map::from_iter([(endpoint.clone(), stats.clone())]);
                        let narrowed = Map::from_iter([(app.clone(), Json::Object(narrowed))]);
                        let narrowed = Map::from_iter([(tenant.clone(), Json::Object(narrowed))]);
                        payload.insert("tenantTrafficStats".into(), Json::Object(narrowed));
                        events.push(event(endpoint.clone(), &payload));
                    }
                }
            }
            Ok(events)
        }
        Record::AutomationInvocation => Ok(vec![event(string("tenantId")?, &fields)]),
        Record::Registered
        | Record::Unregistered
        | Record::AppVersionUpdated
        | Record::MetadataUpdated => Ok(vec![event(string("endpointId")?, &fields)]),
    }
}

/// An Avro value as plain JSON: unions unwrapped (`null` or the value), bytes as base64.
pub fn to_json(value: Value) -> Json {
    use base64::Engine;
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(i) => i.into(),
        Value::Long(l) => l.into(),
        Value::Float(f) => serde_json::Number::from_f64(f.into()).map_or(Json::Null, Json::Number),
        Value::Double(d) => serde_json::Number::from_f64(d).map_or(Json::Null, Json::Number),
        Value::Bytes(bytes) | Value::Fixed(_, bytes) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Union(_, value) => to_json(*value),
        Value::Array(items) => Json::Array(items.into_iter().map(to_json).collect()),
        Value::Map(items) => {
            // Sorted, so the same record always gives the same JSON.
            let mut items: Vec<_> = items.into_iter().collect();
            items.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(items.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
        Value::Record(fields) => {
            Json::Object(fields.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
        other => Json::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::to_avro_datum;

    const NOW: i64 = 1_764_000_000_000;

    fn record(fields: Vec<(&str, Value)>) -> Value {
        Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    fn map(items: Vec<(&str, Value)>) -> Value {
        Value::Map(items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    fn payload(event: &Event) -> Json {
        serde_json::from_slice(&event.payload).unwrap()
    }

    #[test]
    fn a_hand_encoded_registered_event_decodes() {
        // RegisteredEvent written out from the Avro spec: strings are a zigzag length and UTF-8,
        // longs zigzag varints (1000 → 2000 → D0 0F).
        let bytes = [
            &[0x04, b'c', b'1'][..],         // correlationId "c1"
            &[0xD0, 0x0F],                   // timestamp 1000
            &[0x00],                         // timeout 0
            &[0x04, b'v', b'1'],             // appVersionName "v1"
            &[0x08, b'e', b'p', b'-', b'1'], // endpointId "ep-1"
            &[0x02, b'r'],                   // originatorReplicaId "r"
        ]
        .concat();
        let events = decode(
            "kaa.v1.events.epr.endpoint.lifecycle.registered",
            &bytes,
            NOW,
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].key, "ep-1");
        assert_eq!(events[0].kind, "endpoint.lifecycle.registered");
        assert_eq!(events[0].source, "kaa");
        assert_eq!(
            payload(&events[0]),
            serde_json::json!({"correlationId": "c1", "timestamp": 1000, "timeout": 0,
                "appVersionName": "v1", "endpointId": "ep-1", "originatorReplicaId": "r"})
        );
    }

    #[test]
    fn connectivity_gives_one_event_per_endpoint_naming_only_it() {
        let (schema, header) = Record::Connected.schema();
        let value = record(vec![
            ("correlationId", s("c")),
            ("timestamp", Value::Long(NOW)),
            ("timeout", Value::Long(0)),
            ("endpoints", map(vec![("ep-1", s("v1")), ("ep-2", s("v2"))])),
            ("originatorReplicaId", s("r")),
        ]);
        let bare = to_avro_datum(schema, value).unwrap();
        // Bare, and as a single object with the schema's fingerprint.
        for bytes in [bare.clone(), [&header[..], &bare].concat()] {
            let mut events = decode(
                "kaa.v1.events.cm.endpoint.connectivity.connected",
                &bytes,
                NOW,
            )
            .unwrap();
            events.sort_by(|a, b| a.key.cmp(&b.key));
            assert_eq!(
                events.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
                ["ep-1", "ep-2"]
            );
            assert_eq!(
                payload(&events[1])["endpoints"],
                serde_json::json!({"ep-2": "v2"})
            );
        }
    }

    #[test]
    fn the_other_endpoint_records_decode_by_subject() {
        let common = |endpoint: &str| {
            vec![
                ("correlationId", s("c")),
                ("timestamp", Value::Long(NOW)),
                ("timeout", Value::Long(0)),
                ("appVersionName", s("v2")),
                ("endpointId", s(endpoint)),
                ("originatorReplicaId", s("r")),
            ]
        };
        let mut app_version = common("ep-3");
        app_version.insert(4, ("previousAppVersionName", s("v1")));
        let cases = [
            (
                Record::Unregistered,
                "endpoint.lifecycle.unregistered",
                common("ep-2"),
            ),
            (
                Record::AppVersionUpdated,
                "endpoint.lifecycle.appversion-updated",
                app_version,
            ),
        ];
        for (record_type, kind, fields) in cases {
            let (schema, _) = record_type.schema();
            let bytes = to_avro_datum(schema, record(fields)).unwrap();
            let events = decode(&format!("kaa.v1.events.epr.{kind}"), &bytes, NOW).unwrap();
            assert_eq!(events.len(), 1, "{kind}");
            assert_eq!(events[0].kind, kind);
            assert_eq!(payload(&events[0])["appVersionName"], "v2");
        }
        let (schema, _) = Record::Disconnected.schema();
        let value = record(vec![
            ("correlationId", s("c")),
            ("timestamp", Value::Long(NOW)),
            ("timeout", Value::Long(0)),
            ("endpoints", map(vec![("ep-9", s("v1"))])),
            ("originatorReplicaId", s("r")),
        ]);
        let bytes = to_avro_datum(schema, value).unwrap();
        let events = decode(
            "kaa.v1.events.cm.endpoint.connectivity.disconnected",
            &bytes,
            NOW,
        )
        .unwrap();
        assert_eq!(
            (events[0].key.as_str(), events[0].kind.as_str()),
            ("ep-9", "endpoint.connectivity.disconnected")
        );
        // A record on another record's subject does not decode.
        assert!(decode("kaa.v1.events.cm.endpoint.metadata.updated", &bytes, NOW).is_err());
    }

    #[test]
    fn metadata_unions_unwrap_and_aip_bytes_are_base64() {
        let (schema, _) = Record::MetadataUpdated.schema();
        let value = record(vec![
            ("correlationId", s("c")),
            ("timestamp", Value::Long(NOW)),
            ("timeout", Value::Long(0)),
            ("appVersionName", s("v1")),
            ("endpointId", s("ep-9")),
            (
                "removed",
                map(vec![("gone", Value::Union(0, Box::new(Value::Null)))]),
            ),
            (
                "added",
                map(vec![("new", Value::Union(1, Box::new(s("\"x\""))))]),
            ),
            (
                "updated",
                map(vec![(
                    "k",
                    record(vec![
                        ("newValue", Value::Union(1, Box::new(s("2")))),
                        ("oldValue", Value::Union(0, Box::new(Value::Null))),
                    ]),
                )]),
            ),
            ("originatorReplicaId", s("r")),
        ]);
        let bytes = to_avro_datum(schema, value).unwrap();
        let events = decode("kaa.v1.events.epmx.endpoint.metadata.updated", &bytes, NOW).unwrap();
        let json = payload(&events[0]);
        assert_eq!(json["removed"], serde_json::json!({"gone": null}));
        assert_eq!(json["added"], serde_json::json!({"new": "\"x\""}));
        assert_eq!(
            json["updated"],
            serde_json::json!({"k": {"newValue": "2", "oldValue": null}})
        );

        let (schema, _) = Record::AutomationInvocation.schema();
        let value = record(vec![
            ("correlationId", s("c")),
            ("timestamp", Value::Long(NOW)),
            ("timeout", Value::Long(0)),
            ("tenantId", s("tenant-1")),
            (
                "payload",
                Value::Union(1, Box::new(Value::Bytes(b"hi".to_vec()))),
            ),
        ]);
        let bytes = to_avro_datum(schema, value).unwrap();
        let events = decode("kaa.v1.events.x.service.automation.reboot", &bytes, NOW).unwrap();
        assert_eq!(events[0].key, "tenant-1");
        assert_eq!(events[0].kind, "service.automation.reboot");
        assert_eq!(payload(&events[0])["payload"], "aGk=");
    }

    #[test]
    fn traffic_reports_split_per_endpoint() {
        let (schema, _) = Record::TrafficReport.schema();
        let stats = |n: i64| {
            record(vec![
                ("totalReceivedPayload", Value::Long(n)),
                ("totalSentPayload", Value::Long(n)),
                ("totalReceivedMessageCount", Value::Long(1)),
                ("totalSentMessageCount", Value::Long(1)),
            ])
        };
        let value = record(vec![
            (
                "tenantTrafficStats",
                map(vec![(
                    "t1",
                    map(vec![(
                        "app",
                        map(vec![("ep-a", stats(5)), ("ep-b", stats(7))]),
                    )]),
                )]),
            ),
            ("timeFrom", Value::Long(1)),
            ("timeTo", Value::Long(2)),
            ("correlationId", s("c")),
            ("originatorReplicaId", s("r")),
            ("timestamp", Value::Long(NOW)),
            ("timeout", Value::Long(0)),
        ]);
        let bytes = to_avro_datum(schema, value).unwrap();
        let mut events = decode(
            "kaa.v1.events.tr.endpoint.traffic-reporting.payload",
            &bytes,
            NOW,
        )
        .unwrap();
        events.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(events.len(), 2);
        assert_eq!(
            payload(&events[1])["tenantTrafficStats"]["t1"]["app"]["ep-b"]["totalSentPayload"],
            7
        );
        assert!(
            payload(&events[1])["tenantTrafficStats"]["t1"]["app"]
                .get("ep-a")
                .is_none()
        );
    }

    #[test]
    fn garbage_wrong_subjects_and_expired_messages_are_refused() {
        let subject = "kaa.v1.events.epr.endpoint.lifecycle.registered";
        assert!(matches!(
            decode(subject, b"\xff\xff\xff", NOW),
            Err(KaaError::Undecodable { .. })
        ));
        assert!(matches!(
            decode("kaa.v1.events.x.endpoint.nope", b"", NOW),
            Err(KaaError::UnknownSubject(_))
        ));
        assert!(matches!(
            decode("other.subject", b"", NOW),
            Err(KaaError::UnknownSubject(_))
        ));
        let (schema, _) = Record::Registered.schema();
        let value = record(vec![
            ("correlationId", s("c")),
            ("timestamp", Value::Long(NOW - 10_000)),
            ("timeout", Value::Long(5_000)),
            ("appVersionName", s("v")),
            ("endpointId", s("ep")),
            ("originatorReplicaId", s("r")),
        ]);
        let bytes = to_avro_datum(schema, value).unwrap();
        assert_eq!(decode(subject, &bytes, NOW), Err(KaaError::Expired(5_000)));
        // Trailing bytes: not this record.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode(subject, &longer, NOW - 10_000),
            Err(KaaError::Undecodable { .. })
        ));
    }
}
