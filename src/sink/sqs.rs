//! The SQS sink: `SendMessageBatch` to the norn's queue.
//!
//! The worker hands over whatever its queue holds, up to 10 events; they go out as one batch (or
//! more, to stay under `sinks.sqs.max_batch_bytes`). Each message's body is the WRP message as JSON
//! (payload base64), with attributes for the device id, event kind, event id and source. Every
//! per-entry failure is looked at: those that are not the sender's fault are retried (alone), the
//! rest are counted as failures. Clients are shared by norns with the same region, endpoint and
//! credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use super::{DeliveryError, Sink};
use crate::event::Event;
use crate::norn::SqsDestination;

/// The most SQS clients kept at once.
const MAX_CLIENTS: usize = 1024;

/// SQS allows at most 10 entries per `SendMessageBatch`.
pub const MAX_ENTRIES: usize = 10;

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    region: String,
    endpoint: Option<String>,
    credentials: Option<(String, String)>,
}

/// SQS clients, one per (region, endpoint, credentials).
pub struct SqsClients {
    clients: Mutex<HashMap<ClientKey, Client>>,
    timeout: Duration,
    /// The SQS limit for a whole batch (and so for one message).
    pub max_batch_bytes: usize,
}

impl SqsClients {
    pub fn new(timeout: Duration, max_batch_bytes: usize) -> SqsClients {
        SqsClients {
            clients: Mutex::new(HashMap::new()),
            timeout,
            max_batch_bytes,
        }
    }

    async fn client(&self, destination: &SqsDestination) -> Client {
        let key = ClientKey {
            region: destination.region(),
            endpoint: destination.endpoint_url.clone(),
            credentials: destination
                .access_key_id
                .clone()
                .zip(destination.secret_access_key.clone()),
        };
        if let Some(client) = self.clients.lock().expect("clients lock").get(&key) {
            return client.clone();
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(key.region.clone()))
            // brunnr's worker retries with its own backoff and counts every attempt.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(self.timeout)
                    .connect_timeout(self.timeout.min(Duration::from_secs(5)))
                    .build(),
            );
        if let Some((access_key, secret_key)) = &key.credentials {
            loader = loader.credentials_provider(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "brunnr-norn",
            ));
        }
        if let Some(endpoint) = &key.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let client = Client::new(&loader.load().await);
        let mut clients = self.clients.lock().expect("clients lock");
        // Keys come from clients' norns: keep the cache bounded (a cleared one refills on use).
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.entry(key).or_insert(client).clone()
    }
}

/// One norn's queue.
pub struct SqsSink {
    clients: Arc<SqsClients>,
    destination: SqsDestination,
}

impl SqsSink {
    pub fn new(clients: Arc<SqsClients>, destination: SqsDestination) -> SqsSink {
        SqsSink {
            clients,
            destination,
        }
    }
}

fn attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data_type is set")
}

/// The body of an event's message: its WRP message as JSON.
pub fn message_body(event: &Event) -> String {
    String::from_utf8(event.to_wrp().to_json()).expect("JSON is UTF-8")
}

#[async_trait]
impl Sink for SqsSink {
    fn name(&self) -> &'static str {
        "sqs"
    }

    fn max_batch(&self) -> usize {
        MAX_ENTRIES
    }

    async fn deliver(&self, batch: &[Arc<Event>]) -> Result<(), DeliveryError> {
        let client = self.clients.client(&self.destination).await;
        let max_bytes = self.clients.max_batch_bytes;
        let (mut retry, mut failed, mut reason) = (Vec::new(), Vec::new(), String::new());
        // Group consecutive events into calls of at most 10 entries and `max_bytes`.
        let mut start = 0;
        while start < batch.len() {
            let mut entries = Vec::new();
            let mut bytes = 0;
            let mut end = start;
            while end < batch.len() && entries.len() < MAX_ENTRIES {
                let event = &batch[end];
                let body = message_body(event);
                // SQS counts attributes (name, type and value) towards both limits.
                let event_id = event.id.to_string();
                let attributes = [
                    ("deviceID", event.key.as_str()),
                    ("eventKind", event.kind.as_str()),
                    ("eventID", event_id.as_str()),
                    ("source", event.source),
                ];
                let size = body.len()
                    + attributes
                        .iter()
                        .map(|(name, value)| name.len() + "String".len() + value.len())
                        .sum::<usize>();
                if size > max_bytes {
                    // Can never be sent: the sender's fault.
                    failed.push(end);
                    reason =
                        format!("a message of {size} bytes is over the SQS limit of {max_bytes}");
                    end += 1;
                    continue;
                }
                if bytes + size > max_bytes && !entries.is_empty() {
                    break;
                }
                bytes += size;
                entries.push(
                    SendMessageBatchRequestEntry::builder()
                        .id(end.to_string())
                        .message_body(body)
                        .delay_seconds(self.destination.delay_seconds as i32)
                        .set_message_attributes(Some(
                            attributes
                                .iter()
                                .map(|(name, value)| (name.to_string(), attribute(value)))
                                .collect(),
                        ))
                        .build()
                        .expect("id and body are set"),
                );
                end += 1;
            }
            let indices: Vec<usize> = entries
                .iter()
                .map(|entry| entry.id().parse().expect("ids are indices"))
                .collect();
            if !entries.is_empty() {
                let sent = client
                    .send_message_batch()
                    .queue_url(&self.destination.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await;
                match sent {
                    Ok(output) => {
                        for entry in output.failed() {
                            let index: usize = entry.id().parse().unwrap_or(usize::MAX);
                            reason = format!(
                                "{}: {}",
                                entry.code(),
                                entry.message().unwrap_or_default()
                            );
                            if index >= batch.len() {
                                continue;
                            }
                            if entry.sender_fault() {
                                failed.push(index);
                            } else {
                                retry.push(index);
                            }
                        }
                    }
                    Err(error) => {
                        let sender_fault = error
                            .raw_response()
                            .map(|response| {
                                let status = response.status().as_u16();
                                (400..500).contains(&status) && status != 408 && status != 429
                            })
                            .unwrap_or(false);
                        reason = format!(
                            "SendMessageBatch failed: {}",
                            aws_sdk_sqs::error::DisplayErrorContext(&error)
                        );
                        if sender_fault {
                            failed.extend(indices);
                        } else {
                            retry.extend(indices);
                        }
                    }
                }
            }
            start = end;
        }
        if retry.is_empty() && failed.is_empty() {
            Ok(())
        } else if failed.len() == batch.len() {
            Err(DeliveryError::Permanent { reason })
        } else if retry.len() == batch.len() {
            Err(DeliveryError::Retryable {
                reason,
                retry_after: None,
            })
        } else {
            Err(DeliveryError::Partial {
                retry,
                failed,
                reason,
            })
        }
    }
}
