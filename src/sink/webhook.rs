//! The webhook sink: one HTTP `POST` per event to the norn's URL.
//!
//! One [`WebhookClient`] (one reqwest connection pool, one SSRF-guarded resolver) is shared by every
//! webhook norn; each norn's [`WebhookSink`] adds its URL, secret and format. Bodies are the WRP
//! message as msgpack (`wrp`), as JSON (`json`) or the bare payload (`payload`), sent with the
//! XMiDT headers and, when the norn has a secret, `X-Webpa-Signature` and the Standard Webhooks
//! signature headers. Redirects are never followed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::address_policy::{AddressPolicy, GuardedResolver};
use super::{DeliveryError, Sink};
use crate::event::Event;
use crate::norn::{HttpDestination, HttpFormat};

/// The HTTP client every webhook norn shares.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl WebhookClient {
    pub fn new(policy: AddressPolicy, timeout: Duration) -> WebhookClient {
        let policy = Arc::new(policy);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve names itself, out of the SSRF guard's reach.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("brunnr/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .build()
            .expect("the webhook client's settings are valid");
        WebhookClient { http, policy }
    }

    /// POSTs `body` to `url`, signed with `secret` if any, and classifies the answer.
    pub async fn post(
        &self,
        url: &str,
        secret: Option<&str>,
        message_id: &str,
        mut headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<(), DeliveryError> {
        let parsed = reqwest::Url::parse(url).map_err(|error| DeliveryError::Permanent {
            reason: format!("invalid URL: {error}"),
        })?;
        if let Some(ip) = self.policy.refused_literal_host(&parsed) {
            return Err(DeliveryError::Permanent {
                reason: format!("{ip} is an address destinations may not use"),
            });
        }
        if let Some(secret) = secret {
            sign(&mut headers, secret, message_id, &body);
        }
        let response = self
            .http
            .post(parsed)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|error| DeliveryError::Retryable {
                // Without the URL: webhook URLs often carry tokens, and reasons are logged.
                reason: error_chain(&error.without_url()),
                retry_after: None,
            })?;
        classify(response.status(), response.headers())
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn classify(status: StatusCode, headers: &HeaderMap) -> Result<(), DeliveryError> {
    if status.is_success() {
        return Ok(());
    }
    let reason = format!("the destination answered {status}");
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        return Err(DeliveryError::Retryable {
            reason,
            retry_after: headers
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(parse_retry_after),
        });
    }
    if status.is_redirection() {
        return Err(DeliveryError::Permanent {
            reason: format!("{reason}; redirects are not followed"),
        });
    }
    Err(DeliveryError::Permanent { reason })
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Adds `X-Webpa-Signature` (HMAC-SHA1 of the body) and the Standard Webhooks headers
/// (`webhook-id`, `webhook-timestamp`, `webhook-signature`: HMAC-SHA256 of `id.timestamp.body`).
pub fn sign(headers: &mut HeaderMap, secret: &str, message_id: &str, body: &[u8]) {
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default();
    let mut sha1 =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    sha1.update(body);
    let webpa = format!("sha1={}", hex(&sha1.finalize().into_bytes()));
    let standard = standard_webhooks_signature(secret, message_id, timestamp, body);
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    put("x-webpa-signature", webpa);
    put("webhook-id", message_id.to_owned());
    put("webhook-timestamp", timestamp.to_string());
    put("webhook-signature", standard);
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`; a `whsec_` secret's key is the
/// base64 text after the prefix, decoded.
pub fn standard_webhooks_signature(
    secret: &str,
    message_id: &str,
    timestamp: u64,
    body: &[u8],
) -> String {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key");
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One norn's webhook.
pub struct WebhookSink {
    client: WebhookClient,
    destination: HttpDestination,
}

impl WebhookSink {
    pub fn new(client: WebhookClient, destination: HttpDestination) -> WebhookSink {
        WebhookSink {
            client,
            destination,
        }
    }

    /// The body and headers for `event` in this norn's format.
    pub fn request(&self, event: &Event) -> (HeaderMap, Vec<u8>) {
        let message = event.to_wrp();
        let mut headers = HeaderMap::new();
        // Empty values (a message without a transaction id, say) are left out.
        let mut put = |name: &'static str, value: &str| {
            if !value.is_empty()
                && let Ok(value) = HeaderValue::from_str(value)
            {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        put(
            "x-webpa-event",
            event.kind.split('/').next().unwrap_or_default(),
        );
        put("x-webpa-device-id", &event.key);
        // Caduceus always has a transaction id; events without one get the event id.
        let event_id = event.id.to_string();
        let transaction = message.transaction_uuid.as_deref().unwrap_or(&event_id);
        put("x-webpa-transaction-id", transaction);
        put("x-xmidt-message-type", "SimpleEvent");
        put("x-xmidt-source", &message.source);
        put("x-xmidt-dest", &message.dest);
        put("x-xmidt-transaction-uuid", transaction);
        if let Some(content_type) = &message.content_type {
            put("x-xmidt-content-type", content_type);
        }
        if !message.partner_ids.is_empty() {
            put("x-xmidt-partner-id", &message.partner_ids.join(","));
        }
        put("x-brunnr-event-id", &event_id);
        let (content_type, body) = match self.destination.format {
            HttpFormat::Wrp => ("application/msgpack".to_owned(), message.to_msgpack()),
            HttpFormat::Json => ("application/json".to_owned(), message.to_json()),
            HttpFormat::Payload => (event.content_type.clone(), event.payload.to_vec()),
        };
        if let Ok(value) = HeaderValue::from_str(&content_type) {
            headers.insert(CONTENT_TYPE, value);
        }
        (headers, body)
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&self, batch: &[Arc<Event>]) -> Result<(), DeliveryError> {
        for event in batch {
            let (headers, body) = self.request(event);
            self.client
                .post(
                    &self.destination.url,
                    self.destination.secret.as_deref(),
                    &event.id.to_string(),
                    headers,
                    body,
                )
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks reference libraries.
    #[test]
    fn standard_webhooks_vector() {
        let signature = standard_webhooks_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn classifies_statuses() {
        let headers = HeaderMap::new();
        assert!(classify(StatusCode::OK, &headers).is_ok());
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Err(DeliveryError::Retryable { .. })
        ));
        assert!(matches!(
            classify(StatusCode::REQUEST_TIMEOUT, &headers),
            Err(DeliveryError::Retryable { .. })
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &headers),
            Err(DeliveryError::Permanent { .. })
        ));
        assert!(matches!(
            classify(StatusCode::FOUND, &headers),
            Err(DeliveryError::Permanent { .. })
        ));
    }
}
