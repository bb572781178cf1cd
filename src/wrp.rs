//! WRP, the Web Routing Protocol of XMiDT: the message, its msgpack and JSON encodings, and
//! canonical device ids.
//!
//! One struct serves both encodings: msgpack carries `payload` as binary, WRP JSON as base64 text
//! (serde tells them apart by `is_human_readable`). Unknown fields are ignored; every known field
//! survives a decode/encode round trip so WRP destinations get the message as it came.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// `msg_type` of a SimpleEvent, the only type brunnr accepts.
pub const SIMPLE_EVENT: i64 = 4;

/// A WRP message, as Caduceus delivers it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WrpMessage {
    pub msg_type: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdr: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "payload_encoding"
    )]
    pub payload: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partner_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<i64>,
}

/// Why bytes are not a usable WRP message.
#[derive(Debug, thiserror::Error)]
pub enum WrpError {
    #[error("not a valid WRP msgpack message: {0}")]
    Msgpack(#[from] rmp_serde::decode::Error),
    #[error("not a valid WRP JSON message: {0}")]
    Json(#[from] serde_json::Error),
}

impl WrpMessage {
    pub fn from_msgpack(bytes: &[u8]) -> Result<WrpMessage, WrpError> {
        Ok(rmp_serde::from_slice(bytes)?)
    }

    pub fn from_json(bytes: &[u8]) -> Result<WrpMessage, WrpError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// msgpack with field names, as WRP requires.
    pub fn to_msgpack(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a WRP message always encodes")
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a WRP message always encodes")
    }

    /// The event name from `dest`: `event:device-status/mac:1122…/online` → `device-status/mac:…/online`.
    pub fn event_path(&self) -> Option<&str> {
        self.dest.strip_prefix("event:")
    }
}

/// `payload` as msgpack binary or as base64 text in JSON.
mod payload_encoding {
    use base64::Engine;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        payload: &Option<Bytes>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let payload = payload.as_ref().expect("skipped when None");
        if serializer.is_human_readable() {
            serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(payload))
        } else {
            serializer.serialize_bytes(payload)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Bytes>, D::Error> {
        if deserializer.is_human_readable() {
            let text = Option::<String>::deserialize(deserializer)?;
            text.map(|text| {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map(Bytes::from)
                    .map_err(|error| {
                        serde::de::Error::custom(format!("payload is not base64: {error}"))
                    })
            })
            .transpose()
        } else {
            let bytes = Option::<serde_bytes::ByteBuf>::deserialize(deserializer)?;
            Ok(bytes.map(|bytes| Bytes::from(bytes.into_vec())))
        }
    }
}

/// The canonical form of a WRP device id, or `None` if `id` is not one.
///
/// `MAC:11:22:33:44:55:66/parodus` → `mac:112233445566`; `uuid:ABC/service` → `uuid:ABC`. The
/// scheme is lower-cased and a trailing service path removed; a MAC loses its separators and must
/// be 12 or 16 hex digits (EUI-48 or EUI-64).
pub fn canonical_device_id(id: &str) -> Option<String> {
    let (scheme, rest) = id.split_once(':')?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return None;
    }
    match scheme.as_str() {
        "mac" => {
            let hex: String = authority
                .chars()
                .filter(|c| !matches!(c, ':' | '-' | '.' | ','))
                .map(|c| c.to_ascii_lowercase())
                .collect();
            let valid = matches!(hex.len(), 12 | 16) && hex.chars().all(|c| c.is_ascii_hexdigit());
            valid.then(|| format!("mac:{hex}"))
        }
        "uuid" | "dns" | "serial" | "self" | "event" => Some(format!("{scheme}:{authority}")),
        _ => None,
    }
}

/// The device an event is about: its `source`, else the id in `event:device-status/<id>/…`.
pub fn event_device_id(message: &WrpMessage) -> Option<String> {
    if let Some(id) = canonical_device_id(&message.source)
        && !id.starts_with("event:")
        && !id.starts_with("self:")
    {
        return Some(id);
    }
    let path = message.event_path()?;
    let mut parts = path.splitn(3, '/');
    let (_kind, id) = (parts.next()?, parts.next()?);
    canonical_device_id(id)
}

/// The event's kind: its `dest` event path without the device id segment
/// (`device-status/mac:112233445566/online` → `device-status/online`).
pub fn event_kind(message: &WrpMessage) -> String {
    let Some(path) = message.event_path() else {
        return message.dest.clone();
    };
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 1 && canonical_device_id(parts[1]).is_some() {
        parts.remove(1);
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_ids() {
        assert_eq!(
            canonical_device_id("MAC:11:22:33:44:55:66/parodus").as_deref(),
            Some("mac:112233445566")
        );
        assert_eq!(
            canonical_device_id("mac:112233445566").as_deref(),
            Some("mac:112233445566")
        );
        assert_eq!(
            canonical_device_id("mac:11-22-33-44-55-6A").as_deref(),
            Some("mac:11223344556a")
        );
        assert_eq!(
            canonical_device_id("UUID:abc-def/x").as_deref(),
            Some("uuid:abc-def")
        );
        assert_eq!(canonical_device_id("mac:1122"), None);
        assert_eq!(canonical_device_id("mac:zz2233445566"), None);
        assert_eq!(canonical_device_id("device-1"), None);
        assert_eq!(canonical_device_id("foo:bar"), None);
    }

    #[test]
    fn device_and_kind_from_dest() {
        let message = WrpMessage {
            msg_type: SIMPLE_EVENT,
            source: "dns:talaria-1".into(),
            dest: "event:device-status/mac:112233445566/online".into(),
            ..Default::default()
        };
        // A dns source is a device id too; the dest is only used when the source is not one.
        assert_eq!(event_device_id(&message).as_deref(), Some("dns:talaria-1"));
        let message = WrpMessage {
            source: "self:/talaria".into(),
            ..message
        };
        assert_eq!(
            event_device_id(&message).as_deref(),
            Some("mac:112233445566")
        );
        assert_eq!(event_kind(&message), "device-status/online");
    }

    #[test]
    fn msgpack_and_json_round_trip() {
        let message = WrpMessage {
            msg_type: SIMPLE_EVENT,
            source: "mac:112233445566".into(),
            dest: "event:device-status/online".into(),
            transaction_uuid: Some("t-1".into()),
            content_type: Some("application/json".into()),
            metadata: [("/boot-time".to_string(), "1".to_string())].into(),
            partner_ids: vec!["comcast".into()],
            payload: Some(Bytes::from_static(b"{\"a\":1}")),
            ..Default::default()
        };
        let packed = message.to_msgpack();
        assert_eq!(WrpMessage::from_msgpack(&packed).unwrap(), message);
        let json = message.to_json();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["payload"], "eyJhIjoxfQ==");
        assert_eq!(WrpMessage::from_json(&json).unwrap(), message);
        // The payload is msgpack binary (bin8 marker 0xc4), not an array of integers.
        let payload_at = packed.windows(7).position(|w| w == b"payload").unwrap();
        assert_eq!(packed[payload_at + 7], 0xc4);
    }
}
