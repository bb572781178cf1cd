//! Norns: durable subscriptions of one owner to one key, delivered to one destination.
//!
//! [`NornRequest`] is what clients send (API.md's shape or a legacy Mimisbrunnr body);
//! [`NornRequest::validate`] turns it into a [`Norn`], the stored form; [`NornView`] is what the API
//! answers, always in API.md's shape, secrets masked.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::duration::{format_duration, parse_duration};
use crate::hub::filter::Filter;
use crate::sink::address_policy::AddressPolicy;
use crate::wrp::canonical_device_id;

/// A stored norn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Norn {
    pub id: Uuid,
    /// The routing key (canonical device id, or another key as given).
    pub key: String,
    pub destination: Destination,
    /// The duration asked for, in milliseconds, if one was (answered Go-style).
    pub duration_ms: Option<u64>,
    pub filter: Option<String>,
    pub expires_at_ms: i64,
    pub owner: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Where a norn's events go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    Http(HttpDestination),
    /// Boxed: it is the largest, and a million webhook norns should not pay for its size.
    Sqs(Box<SqsDestination>),
    Nats(NatsDestination),
}

impl Destination {
    /// What makes two destinations the same for the one-norn-per-(key, destination) rule.
    pub fn identity(&self) -> String {
        match self {
            Destination::Http(http) => format!("http {}", http.url),
            Destination::Sqs(sqs) => format!("sqs {}", sqs.queue_url),
            Destination::Nats(nats) => format!("nats {}", nats.subject),
        }
    }

    /// The sink kind, as metrics label it.
    pub fn sink_name(&self) -> &'static str {
        match self {
            Destination::Http(_) => "webhook",
            Destination::Sqs(_) => "sqs",
            Destination::Nats(_) => "nats",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HttpDestination {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(
        rename = "failureURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_url: Option<String>,
    #[serde(default)]
    pub format: HttpFormat,
}

/// An SQS queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqsDestination {
    #[serde(rename = "queueURL")]
    pub queue_url: String,
    /// Absent: taken from a `sqs.<region>.amazonaws.com` queue URL, else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(
        rename = "accessKeyID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub access_key_id: Option<String>,
    #[serde(
        rename = "secretAccessKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub secret_access_key: Option<String>,
    /// An SQS-compatible server instead of AWS.
    #[serde(
        rename = "endpointURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint_url: Option<String>,
    #[serde(rename = "delaySeconds", default)]
    pub delay_seconds: u32,
}

impl SqsDestination {
    /// The region to sign for.
    pub fn region(&self) -> String {
        if let Some(region) = &self.region {
            return region.clone();
        }
        url::Url::parse(&self.queue_url)
            .ok()
            .and_then(|url| {
                let host = url.host_str()?.to_owned();
                let rest = host.strip_prefix("sqs.")?;
                Some(rest.split('.').next()?.to_owned())
            })
            .filter(|region| !region.is_empty())
            .unwrap_or_else(|| "us-east-1".into())
    }
}

/// A NATS subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsDestination {
    pub subject: String,
    #[serde(default)]
    pub format: NatsFormat,
}

/// How a NATS message is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NatsFormat {
    /// The event envelope as JSON.
    #[default]
    Json,
    /// A Kaa 23/AIP AutomationInvocation (Avro binary) carrying the envelope.
    KaaAip,
}

/// How a webhook body is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HttpFormat {
    /// The WRP message as msgpack.
    #[default]
    Wrp,
    /// The WRP message as JSON (payload base64).
    Json,
    /// The raw payload with its own content type.
    Payload,
}

impl Norn {
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms <= now_ms
    }

    pub fn view(&self) -> NornView {
        let mut destination = self.destination.clone();
        match &mut destination {
            Destination::Http(http) => {
                if http.secret.is_some() {
                    http.secret = Some(MASK.into());
                }
            }
            Destination::Sqs(sqs) => {
                if sqs.secret_access_key.is_some() {
                    sqs.secret_access_key = Some(MASK.into());
                }
            }
            Destination::Nats(_) => {}
        }
        NornView {
            id: self.id.to_string(),
            device_id: self.key.clone(),
            destination,
            duration: self
                .duration_ms
                .map(|ms| format_duration(Duration::from_millis(ms))),
            filter: self.filter.clone(),
            expires_at: rfc3339(self.expires_at_ms),
            owner: self.owner.clone(),
            created_at: rfc3339(self.created_at_ms),
            updated_at: rfc3339(self.updated_at_ms),
        }
    }
}

const MASK: &str = "****";

/// A norn as the API answers it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NornView {
    pub id: String,
    #[serde(rename = "deviceID")]
    pub device_id: String,
    pub destination: Destination,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(rename = "expiresAt")]
    pub expires_at: String,
    pub owner: String,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A norn as clients send it: API.md's shape, or a legacy Mimisbrunnr body. Fields the API answers
/// with (`id`, `owner`, …) are accepted and ignored, so a `GET` answer can be `PUT` back.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NornRequest {
    #[serde(rename = "deviceID", alias = "DeviceID", alias = "deviceId")]
    pub device_id: Option<String>,
    #[serde(alias = "Destination")]
    pub destination: Option<DestinationRequest>,
    /// Go-style (`10m`) or seconds.
    #[schema(value_type = Option<String>)]
    pub duration: Option<serde_json::Value>,
    /// Legacy: seconds.
    #[serde(rename = "TTL")]
    pub ttl: Option<i64>,
    #[serde(rename = "expiresAt")]
    pub expires_at: Option<String>,
    pub filter: Option<String>,
    #[schema(ignore)]
    pub id: Option<serde_json::Value>,
    #[schema(ignore)]
    pub owner: Option<serde_json::Value>,
    #[serde(rename = "createdAt")]
    #[schema(ignore)]
    pub created_at: Option<serde_json::Value>,
    #[serde(rename = "updatedAt")]
    #[schema(ignore)]
    pub updated_at: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationRequest {
    pub http: Option<HttpDestination>,
    pub sqs: Option<SqsDestination>,
    pub nats: Option<NatsDestination>,
    #[serde(rename = "HttpConfig")]
    pub http_config: Option<LegacyHttpConfig>,
    #[serde(rename = "AWSConfig")]
    pub aws_config: Option<LegacyAwsConfig>,
}

/// Mimisbrunnr's `Destination.AWSConfig`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LegacyAwsConfig {
    #[serde(rename = "AccessKey", default)]
    pub access_key: Option<String>,
    #[serde(rename = "SecretKey", default)]
    pub secret_key: Option<String>,
    /// The AWS account id; not needed to send.
    #[serde(rename = "ID", default)]
    #[schema(ignore)]
    pub id: Option<serde_json::Value>,
    #[serde(rename = "Sqs")]
    pub sqs: LegacySqs,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LegacySqs {
    #[serde(rename = "QueueURL")]
    pub queue_url: String,
    #[serde(rename = "DelaySeconds", default)]
    pub delay_seconds: u32,
    #[serde(rename = "Region", default)]
    pub region: Option<String>,
}

/// Mimisbrunnr's `Destination.HttpConfig`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LegacyHttpConfig {
    #[serde(rename = "URL")]
    pub url: String,
    #[serde(rename = "Secret", default)]
    pub secret: Option<String>,
    #[serde(rename = "FailureURL", default)]
    pub failure_url: Option<String>,
}

/// Why a norn request was refused (all 400s).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NornError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Destination(String),
    #[error("{0}")]
    Duration(String),
    #[error("the filter is not a valid CEL expression: {0}")]
    Filter(String),
}

/// What validation needs from the configuration.
pub struct NornRules<'a> {
    pub max_duration: Duration,
    pub address_policy: &'a AddressPolicy,
    /// Whether a NATS connection for sinks is configured.
    pub nats_available: bool,
}

/// A validated request: everything but the id, owner and timestamps.
#[derive(Debug)]
pub struct ValidNorn {
    pub key: String,
    pub destination: Destination,
    pub duration_ms: Option<u64>,
    pub filter: Option<(String, Filter)>,
    pub expires_at_ms: i64,
}

impl NornRequest {
    /// A `PUT` of a `GET` answer carries `"****"` for secrets: those keep the stored values.
    pub fn restore_masked(&mut self, stored: &Destination) {
        let Some(destination) = self.destination.as_mut() else {
            return;
        };
        match stored {
            Destination::Http(old) => {
                if let Some(http) = destination.http.as_mut()
                    && http.secret.as_deref() == Some(MASK)
                {
                    http.secret = old.secret.clone();
                }
            }
            Destination::Sqs(old) => {
                if let Some(sqs) = destination.sqs.as_mut()
                    && sqs.secret_access_key.as_deref() == Some(MASK)
                {
                    sqs.secret_access_key = old.secret_access_key.clone();
                }
            }
            Destination::Nats(_) => {}
        }
    }

    pub fn validate(self, rules: &NornRules<'_>, now_ms: i64) -> Result<ValidNorn, NornError> {
        let device_id = self
            .device_id
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| NornError::Invalid("deviceID is required".into()))?;
        let key = canonical_device_id(&device_id).unwrap_or_else(|| device_id.trim().to_owned());
        if key.len() > 512 {
            return Err(NornError::Invalid(
                "deviceID is longer than 512 bytes".into(),
            ));
        }

        let destination = self
            .destination
            .ok_or_else(|| NornError::Destination("destination is required".into()))?
            .validate(rules)?;

        let max = rules.max_duration;
        let too_long = || {
            NornError::Duration(format!(
                "the norn may last at most {} (norns.max_duration)",
                format_duration(max)
            ))
        };
        let (duration_ms, expires_at_ms) = match (self.duration, self.ttl, self.expires_at) {
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(NornError::Duration(
                    "give either duration or expiresAt, not both".into(),
                ));
            }
            (Some(duration), _, None) => {
                let parsed = match &duration {
                    serde_json::Value::String(text) => {
                        parse_duration(text).map_err(NornError::Duration)?
                    }
                    serde_json::Value::Number(n) => {
                        Duration::from_secs(n.as_u64().ok_or_else(|| {
                            NornError::Duration(
                                "duration must be a positive number of seconds".into(),
                            )
                        })?)
                    }
                    _ => {
                        return Err(NornError::Duration(
                            "duration must be text like 10m or seconds".into(),
                        ));
                    }
                };
                positive_within(parsed, max).ok_or_else(too_long)?;
                (
                    Some(parsed.as_millis() as u64),
                    now_ms + parsed.as_millis() as i64,
                )
            }
            (None, Some(ttl), None) => {
                let parsed = Duration::from_secs(u64::try_from(ttl).map_err(|_| {
                    NornError::Duration("TTL must be a positive number of seconds".into())
                })?);
                positive_within(parsed, max).ok_or_else(too_long)?;
                (
                    Some(parsed.as_millis() as u64),
                    now_ms + parsed.as_millis() as i64,
                )
            }
            (None, None, Some(text)) => {
                let at = OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| {
                    NornError::Duration(format!("expiresAt {text:?} is not an RFC 3339 time"))
                })?;
                let at_ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
                if at_ms <= now_ms {
                    return Err(NornError::Duration(format!(
                        "expiresAt {text} is in the past"
                    )));
                }
                // A second of slack for clocks and the trip here.
                if at_ms - now_ms > max.as_millis() as i64 + 1000 {
                    return Err(too_long());
                }
                (None, at_ms)
            }
            (None, None, None) => {
                return Err(NornError::Duration(format!(
                    "duration (at most {}) or expiresAt is required",
                    format_duration(max)
                )));
            }
        };

        let filter = match self.filter.filter(|text| !text.trim().is_empty()) {
            Some(text) => {
                let compiled = Filter::compile(&text).map_err(NornError::Filter)?;
                Some((text, compiled))
            }
            None => None,
        };

        Ok(ValidNorn {
            key,
            destination,
            duration_ms,
            filter,
            expires_at_ms,
        })
    }
}

fn positive_within(duration: Duration, max: Duration) -> Option<()> {
    (!duration.is_zero() && duration <= max).then_some(())
}

impl DestinationRequest {
    fn validate(self, rules: &NornRules<'_>) -> Result<Destination, NornError> {
        let policy = rules.address_policy;
        let legacy_http = self.http_config.map(|legacy| HttpDestination {
            url: legacy.url,
            secret: legacy.secret,
            failure_url: legacy.failure_url,
            format: HttpFormat::Wrp,
        });
        let given = [
            self.http.is_some() || legacy_http.is_some(),
            self.sqs.is_some() || self.aws_config.is_some(),
            self.nats.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() != 1 {
            return Err(NornError::Destination(
                "destination must have exactly one of http, sqs or nats".into(),
            ));
        }
        if let Some(mut http) = self.http.or(legacy_http) {
            check_url("destination.http.url", &http.url, policy)?;
            if let Some(failure_url) = &http.failure_url {
                if failure_url.is_empty() {
                    http.failure_url = None;
                } else {
                    check_url("destination.http.failureURL", failure_url, policy)?;
                }
            }
            if http.secret.as_deref() == Some("") {
                http.secret = None;
            }
            if http.secret.as_deref() == Some(MASK) {
                return Err(NornError::Destination(
                    "destination.http.secret is the mask \"****\": send the real secret (or none)"
                        .into(),
                ));
            }
            if let Some(secret) = &http.secret
                && let Some(encoded) = secret.strip_prefix("whsec_")
            {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|_| {
                        NornError::Destination(
                            "a whsec_ secret must be base64 after the prefix".into(),
                        )
                    })?;
            }
            return Ok(Destination::Http(http));
        }
        let legacy_sqs = self.aws_config.map(|aws| SqsDestination {
            queue_url: aws.sqs.queue_url,
            region: aws.sqs.region.filter(|region| !region.is_empty()),
            access_key_id: aws.access_key.filter(|key| !key.is_empty()),
            secret_access_key: aws.secret_key.filter(|key| !key.is_empty()),
            endpoint_url: None,
            delay_seconds: aws.sqs.delay_seconds,
        });
        if let Some(sqs) = self.sqs.or(legacy_sqs) {
            check_url("destination.sqs.queueURL", &sqs.queue_url, policy)?;
            if let Some(endpoint) = &sqs.endpoint_url {
                check_url("destination.sqs.endpointURL", endpoint, policy)?;
            }
            if sqs.delay_seconds > 900 {
                return Err(NornError::Destination(
                    "destination.sqs.delaySeconds must be between 0 and 900".into(),
                ));
            }
            if sqs.access_key_id.is_some() != sqs.secret_access_key.is_some() {
                return Err(NornError::Destination(
                    "destination.sqs needs both accessKeyID and secretAccessKey, or neither".into(),
                ));
            }
            if sqs.secret_access_key.as_deref() == Some(MASK) {
                return Err(NornError::Destination(
                    "destination.sqs.secretAccessKey is the mask \"****\": send the real key"
                        .into(),
                ));
            }
            return Ok(Destination::Sqs(Box::new(sqs)));
        }
        let nats = self.nats.expect("exactly one destination is given");
        check_subject(&nats.subject)?;
        if !rules.nats_available {
            return Err(NornError::Destination(
                "nats destinations need a NATS server: set sinks.nats.url (or sources.nats.url)"
                    .into(),
            ));
        }
        Ok(Destination::Nats(nats))
    }
}

/// A subject to publish to: dot-separated tokens, no wildcards, no white space.
pub fn check_subject(subject: &str) -> Result<(), NornError> {
    let invalid =
        |why: &str| NornError::Destination(format!("destination.nats.subject {subject:?} {why}"));
    if subject.is_empty() || subject.len() > 256 {
        return Err(invalid("must have 1 to 256 characters"));
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain white space"));
    }
    if subject.starts_with('$') || subject.starts_with("_INBOX.") {
        return Err(invalid("must not be a system subject ($…, _INBOX.…)"));
    }
    if subject.split('.').any(|token| token.is_empty()) {
        return Err(invalid(
            "must not have empty tokens (leading, trailing or double dots)",
        ));
    }
    if subject.split('.').any(|token| token == "*" || token == ">") || subject.contains(['*', '>'])
    {
        return Err(invalid("must not contain wildcards (* or >)"));
    }
    Ok(())
}

/// An http(s) URL with a host, whose host is not a literal IP the policy refuses.
pub fn check_url(field: &str, text: &str, policy: &AddressPolicy) -> Result<(), NornError> {
    let url = url::Url::parse(text).map_err(|error| {
        NornError::Destination(format!("{field} {text:?} is not a URL: {error}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(NornError::Destination(format!(
            "{field} must be an http or https URL, not {}",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(NornError::Destination(format!("{field} has no host")));
    }
    if let Some(ip) = policy.refused_literal_host(&url) {
        return Err(NornError::Destination(format!(
            "{field} points at {ip}, an address destinations may not use (see delivery.allow_private_destinations)"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(NornError::Destination(format!(
            "{field} must not carry credentials; use secret for signing"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(policy: &AddressPolicy) -> NornRules<'_> {
        NornRules {
            max_duration: Duration::from_secs(3600),
            address_policy: policy,
            nats_available: true,
        }
    }

    fn request(json: serde_json::Value) -> NornRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn accepts_api_and_legacy_bodies() {
        let policy = AddressPolicy::default();
        let valid = request(serde_json::json!({
            "deviceID": "MAC:11:22:33:44:55:66/parodus",
            "destination": {"http": {"url": "https://example.com/hook", "format": "json"}},
            "duration": "10m"
        }))
        .validate(&rules(&policy), 0)
        .unwrap();
        assert_eq!(valid.key, "mac:112233445566");
        assert_eq!(valid.expires_at_ms, 600_000);
        let legacy = request(serde_json::json!({
            "DeviceID": "mac:112233445566",
            "TTL": 60,
            "Destination": {"HttpConfig": {"URL": "https://example.com/hook", "Secret": "s", "FailureURL": "https://example.com/fail"}}
        }))
        .validate(&rules(&policy), 0)
        .unwrap();
        let Destination::Http(http) = legacy.destination else {
            panic!("an http destination")
        };
        assert_eq!(http.secret.as_deref(), Some("s"));
        assert_eq!(
            http.failure_url.as_deref(),
            Some("https://example.com/fail")
        );
        assert_eq!(legacy.expires_at_ms, 60_000);
    }

    #[test]
    fn refuses_bad_norns() {
        let policy = AddressPolicy::default();
        let check = |json: serde_json::Value| {
            request(json)
                .validate(&rules(&policy), 0)
                .unwrap_err()
                .to_string()
        };
        let url = |u: &str| serde_json::json!({"deviceID": "mac:112233445566", "destination": {"http": {"url": u}}, "duration": "1m"});
        assert!(check(url("ftp://example.com/")).contains("http or https"));
        assert!(check(url("http://127.0.0.1:8080/")).contains("127.0.0.1"));
        assert!(check(url("http://[::1]/")).contains("::1"));
        assert!(check(url("http://169.254.169.254/latest")).contains("169.254.169.254"));
        assert!(check(url("not a url")).contains("not a URL"));
        let too_long = check(
            serde_json::json!({"deviceID": "mac:112233445566", "destination": {"http": {"url": "https://e.com/"}}, "duration": "2h"}),
        );
        assert!(too_long.contains("1h"), "{too_long}");
        let past = check(
            serde_json::json!({"deviceID": "d", "destination": {"http": {"url": "https://e.com/"}}, "expiresAt": "1970-01-01T00:00:00Z"}),
        );
        assert!(past.contains("past"), "{past}");
        let bad_time = check(
            serde_json::json!({"deviceID": "d", "destination": {"http": {"url": "https://e.com/"}}, "expiresAt": "tomorrow"}),
        );
        assert!(bad_time.contains("RFC 3339"), "{bad_time}");
        let filter = check(
            serde_json::json!({"deviceID": "d", "destination": {"http": {"url": "https://e.com/"}}, "duration": 60, "filter": "event.kind =="}),
        );
        assert!(filter.contains("CEL"), "{filter}");
    }

    #[test]
    fn sqs_and_nats_destinations() {
        let policy = AddressPolicy::default();
        let legacy = request(serde_json::json!({
            "DeviceID": "mac:112233445566", "TTL": 60,
            "Destination": {"AWSConfig": {"AccessKey": "AKIA1", "SecretKey": "s3", "ID": "123456789012",
                "Sqs": {"QueueURL": "https://sqs.eu-west-1.amazonaws.com/123456789012/events", "DelaySeconds": 5}}}
        }))
        .validate(&rules(&policy), 0)
        .unwrap();
        let Destination::Sqs(sqs) = &legacy.destination else {
            panic!("an sqs destination")
        };
        assert_eq!(sqs.region(), "eu-west-1");
        assert_eq!(sqs.delay_seconds, 5);
        assert_eq!(sqs.access_key_id.as_deref(), Some("AKIA1"));
        let check = |destination: serde_json::Value| {
            request(
                serde_json::json!({"deviceID": "d", "destination": destination, "duration": "1m"}),
            )
            .validate(&rules(&policy), 0)
            .map(|_| ())
            .map_err(|error| error.to_string())
        };
        let queue = "https://sqs.us-east-1.amazonaws.com/1/q";
        assert!(
            check(serde_json::json!({"sqs": {"queueURL": queue, "delaySeconds": 901}}))
                .unwrap_err()
                .contains("900")
        );
        assert!(
            check(serde_json::json!({"sqs": {"queueURL": queue, "accessKeyID": "a"}}))
                .unwrap_err()
                .contains("both")
        );
        assert!(
            check(serde_json::json!({"sqs": {"queueURL": queue, "delaySeconds": 900}})).is_ok()
        );
        assert!(check(serde_json::json!({"nats": {"subject": "brunnr.events.mac"}})).is_ok());
        for bad in [
            "a.*",
            "a.>",
            "a..b",
            ".a",
            "a b",
            "",
            "$JS.API.STREAM.DELETE.x",
            "_INBOX.x",
        ] {
            assert!(
                check(serde_json::json!({"nats": {"subject": bad}})).is_err(),
                "{bad}"
            );
        }
        let no_nats = NornRules {
            nats_available: false,
            ..rules(&policy)
        };
        let error = request(serde_json::json!({"deviceID": "d", "destination": {"nats": {"subject": "x"}}, "duration": "1m"}))
            .validate(&no_nats, 0)
            .unwrap_err()
            .to_string();
        assert!(error.contains("sinks.nats.url"), "{error}");
    }

    #[test]
    fn masked_secrets_keep_the_stored_ones() {
        let stored = Destination::Http(HttpDestination {
            url: "https://e.com/".into(),
            secret: Some("hunter2".into()),
            failure_url: None,
            format: HttpFormat::Wrp,
        });
        let mut again = request(serde_json::json!({"deviceID": "d", "duration": "1m",
            "destination": {"http": {"url": "https://e.com/", "secret": "****"}}}));
        again.restore_masked(&stored);
        let valid = again
            .validate(&rules(&AddressPolicy::default()), 0)
            .unwrap();
        assert_eq!(valid.destination, stored);
    }

    #[test]
    fn view_masks_secrets() {
        let norn = Norn {
            id: Uuid::now_v7(),
            key: "mac:112233445566".into(),
            destination: Destination::Http(HttpDestination {
                url: "https://e.com/".into(),
                secret: Some("hunter2".into()),
                failure_url: None,
                format: HttpFormat::Wrp,
            }),
            duration_ms: Some(60_000),
            filter: None,
            expires_at_ms: 60_000,
            owner: "alice".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let json = serde_json::to_value(norn.view()).unwrap();
        assert_eq!(json["destination"]["http"]["secret"], "****");
        assert_eq!(json["expiresAt"], "1970-01-01T00:01:00Z");
        assert_eq!(json["deviceID"], "mac:112233445566");
    }
}
