//! The NATS sink: publishes each event to the norn's subject on one connection shared by every
//! NATS norn.
//!
//! Formats: `json`, the event envelope; `kaa-aip`, a Kaa 23/AIP `AutomationInvocation` in Avro
//! binary (schema `docs/kaa/0023-automation-invocation.avsc`) whose payload is the envelope as
//! JSON. A batch (what the norn's queue holds, up to 64) is published, then flushed; an event counts
//! as delivered once it is in the client's buffer, which NATS core cannot confirm further. The
//! client reconnects by itself; while it is disconnected, publishes wait in its buffer
//! (`sinks.nats.buffer` messages). A publish that cannot be buffered within the delivery timeout
//! fails (retryable, for the events not yet buffered only, so none is published twice); then the
//! norn's queue fills and drops are counted as for any sink.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::types::Value;
use async_trait::async_trait;

use super::{DeliveryError, Sink};
use crate::event::{Event, now_ms};
use crate::norn::{NatsDestination, NatsFormat};

/// The vendored 23/AIP schema.
pub static AIP_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema::parse_str(include_str!(
        "../../docs/kaa/0023-automation-invocation.avsc"
    ))
    .expect("the vendored schema parses")
});

/// The connection every NATS norn shares.
#[derive(Clone)]
pub struct NatsConnection {
    client: async_nats::Client,
    timeout: Duration,
}

impl NatsConnection {
    /// Connects in the background (brunnr starts even when NATS is down) and reconnects forever.
    pub async fn connect(
        url: &str,
        buffer: usize,
        timeout: Duration,
    ) -> Result<NatsConnection, async_nats::ConnectError> {
        let client = async_nats::ConnectOptions::new()
            .name("brunnr")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .client_capacity(buffer)
            .connect(url)
            .await?;
        Ok(NatsConnection { client, timeout })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// One norn's subject.
pub struct NatsSink {
    connection: NatsConnection,
    destination: NatsDestination,
}

impl NatsSink {
    pub fn new(connection: NatsConnection, destination: NatsDestination) -> NatsSink {
        NatsSink {
            connection,
            destination,
        }
    }
}

/// The body for `event` in `format`; `tenant` is the norn's key.
pub fn encode(event: &Event, format: NatsFormat, tenant: &str) -> Vec<u8> {
    let envelope = serde_json::to_vec(&event.envelope()).expect("an envelope always encodes");
    match format {
        NatsFormat::Json => envelope,
        NatsFormat::KaaAip => {
            let record = Value::Record(vec![
                ("correlationId".into(), Value::String(event.id.to_string())),
                ("timestamp".into(), Value::Long(now_ms())),
                ("timeout".into(), Value::Long(0)),
                ("tenantId".into(), Value::String(tenant.to_owned())),
                (
                    "payload".into(),
                    Value::Union(1, Box::new(Value::Bytes(envelope))),
                ),
            ]);
            apache_avro::to_avro_datum(&AIP_SCHEMA, record).expect("the record matches the schema")
        }
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    /// Publishes are cheap; the flush after them is a round trip, so it is shared.
    fn max_batch(&self) -> usize {
        64
    }

    async fn deliver(&self, batch: &[Arc<Event>]) -> Result<(), DeliveryError> {
        let client = &self.connection.client;
        for (index, event) in batch.iter().enumerate() {
            let body = encode(event, self.destination.format, &event.key);
            let publish = client.publish(self.destination.subject.clone(), body.into());
            let reason = match tokio::time::timeout(self.connection.timeout, publish).await {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => format!("NATS publish failed: {error}"),
                Err(_) => "NATS is unreachable and the client's buffer is full".to_owned(),
            };
            // What was buffered goes out on reconnect: retry only the rest, never publish twice.
            return Err(if index == 0 {
                DeliveryError::Retryable {
                    reason,
                    retry_after: None,
                }
            } else {
                DeliveryError::Partial {
                    retry: (index..batch.len()).collect(),
                    failed: Vec::new(),
                    reason,
                }
            });
        }
        // Push the bytes out now rather than on the client's next write (best effort: while
        // disconnected they wait in the buffer).
        if self.connection.is_connected() {
            let _ = tokio::time::timeout(self.connection.timeout, client.flush()).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn kaa_aip_decodes_with_the_schema() {
        let event = Event {
            id: Event::new_id(),
            key: "mac:112233445566".into(),
            kind: "device-status/online".into(),
            source: "wrp",
            time_ms: 5,
            content_type: "application/json".into(),
            payload: Bytes::from_static(b"{\"a\":1}"),
            wrp: None,
        };
        let bytes = encode(&event, NatsFormat::KaaAip, "tenant-1");
        let value = apache_avro::from_avro_datum(&AIP_SCHEMA, &mut &bytes[..], None).unwrap();
        let Value::Record(fields) = value else {
            panic!("a record")
        };
        assert_eq!(
            fields[0],
            ("correlationId".into(), Value::String(event.id.to_string()))
        );
        assert_eq!(
            fields[3],
            ("tenantId".into(), Value::String("tenant-1".into()))
        );
        let Value::Union(1, payload) = &fields[4].1 else {
            panic!("payload bytes")
        };
        let Value::Bytes(payload) = payload.as_ref() else {
            panic!("bytes")
        };
        let envelope: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(envelope["payload"]["a"], 1);
        assert_eq!(envelope["key"], "mac:112233445566");
    }
}
