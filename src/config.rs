//! brunnr's configuration: one YAML file, every key overridable by a `BRUNNR_<PATH>` environment
//! variable (`BRUNNR_SERVER__LISTEN`, `BRUNNR_DELIVERY__QUEUE_SIZE`), checked at start-up with errors
//! that name the offending key.
//!
//! The file is read into a generic value first, the environment is applied on top, and only then is
//! the whole deserialized into [`Config`] through `serde_path_to_error`, so that an error in either
//! place is reported with its dotted path (`delivery.timeout: unknown unit "x"`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::AuthConfig;
use crate::duration::{serde_duration, serde_size};

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// The whole configuration. Every section has defaults, so an empty file is valid.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub norns: NornsConfig,
    pub delivery: DeliveryConfig,
    pub live: LiveConfig,
    pub sources: SourcesConfig,
    pub sinks: SinksConfig,
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted by the JSON API.
    #[serde(with = "serde_size")]
    pub max_body: u64,
    /// How long a request body may take to arrive; slower ones get 408.
    #[serde(with = "serde_duration")]
    pub body_timeout: Duration,
    /// How long in-flight work may take to finish after SIGTERM.
    #[serde(with = "serde_duration")]
    pub drain_timeout: Duration,
    /// Events being taken in (read, decoded, routed) at once; beyond it `POST /events` answers 429.
    pub max_events_in_flight: usize,
    /// Web origins whose pages may call the API (CORS), e.g. an `EventSource` on `/v1/stream`;
    /// `"*"` for any. Empty: no CORS headers.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 6600)),
            max_body: 1 << 20,
            body_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_events_in_flight: 10_000,
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// A file-backed embedded database in `store.path`.
    Embedded,
    /// NATS JetStream KV (cluster mode; not built yet).
    Nats,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Embedded,
            path: PathBuf::from("./brunnr-data"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NornsConfig {
    /// The longest a norn may live; longer requests are refused with 400.
    #[serde(with = "serde_duration")]
    pub max_duration: Duration,
    /// How often expired norns are removed from the store.
    #[serde(with = "serde_duration")]
    pub expiry_sweep: Duration,
}

impl Default for NornsConfig {
    fn default() -> Self {
        Self {
            max_duration: Duration::from_secs(24 * 3600),
            expiry_sweep: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Events buffered per norn; one more is dropped and cuts the norn off.
    pub queue_size: usize,
    /// Deliveries in flight per norn; 1 keeps them in order.
    pub max_in_flight: usize,
    /// Retries after the first attempt for retryable failures.
    pub retries: u32,
    /// Timeout of one delivery attempt.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// First retry delay; doubles each retry, with jitter.
    #[serde(with = "serde_duration")]
    pub backoff: Duration,
    /// Longest delay between retries, `Retry-After` included.
    #[serde(with = "serde_duration")]
    pub max_backoff: Duration,
    /// How long a norn whose queue overflowed receives nothing.
    #[serde(with = "serde_duration")]
    pub cut_off_period: Duration,
    /// A norn's delivery task ends after this long without events (it starts again on the next).
    #[serde(with = "serde_duration")]
    pub idle_timeout: Duration,
    /// Allow destinations on loopback, private, link-local and metadata addresses.
    pub allow_private_destinations: bool,
    /// Ranges allowed even though private.
    pub allow_cidrs: Vec<IpNet>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            queue_size: 1000,
            max_in_flight: 1,
            retries: 3,
            timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            cut_off_period: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            allow_private_destinations: false,
            allow_cidrs: Vec::new(),
        }
    }
}

/// Live sessions (WebSocket, SSE) and the history they replay from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    #[serde(with = "serde_duration")]
    pub heartbeat: Duration,
    #[serde(with = "serde_duration")]
    pub heartbeat_timeout: Duration,
    pub max_connections: usize,
    pub max_sessions_per_key: usize,
    pub session_buffer: usize,
    pub history: HistoryConfig,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(60),
            max_connections: 100_000,
            max_sessions_per_key: 16,
            session_buffer: 1024,
            history: HistoryConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events kept per key (0: no history).
    pub max_events: usize,
    /// Events older than this are dropped from history.
    #[serde(with = "serde_duration")]
    pub max_age: Duration,
    /// Memory for history over all keys; past it the oldest events go first.
    #[serde(with = "serde_size")]
    pub max_bytes: u64,
    /// How often history is written to the store; a crash loses at most this much.
    #[serde(with = "serde_duration")]
    pub commit_interval: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_events: 1000,
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 256 * 1024 * 1024,
            commit_interval: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesConfig {
    pub wrp: WrpSourceConfig,
    pub nats: Option<NatsSourceConfig>,
    pub caduceus: Option<CaduceusConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WrpSourceConfig {
    /// When set, `POST /events` requires a Caduceus signature made with it.
    pub secret: Option<String>,
    #[serde(with = "serde_size")]
    pub max_body: u64,
}

impl Default for WrpSourceConfig {
    fn default() -> Self {
        Self {
            secret: None,
            max_body: 1 << 20,
        }
    }
}

/// NATS sources (Kaa, monit).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSourceConfig {
    pub url: String,
    /// Replicas in one queue group share the messages instead of each taking all of them.
    pub queue_group: String,
    pub kaa: bool,
    /// The Kaa subjects subscribed to (the record still comes from the subject's kind).
    pub kaa_subjects: Vec<String>,
    pub monit: bool,
}

impl Default for NatsSourceConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            queue_group: "brunnr".into(),
            kaa: true,
            kaa_subjects: vec![
                "kaa.v1.events.*.endpoint.>".into(),
                "kaa.v1.events.*.service.automation.*".into(),
            ],
            monit: true,
        }
    }
}

/// Registration of brunnr's webhook with Caduceus (`POST` to its `/hook`), renewed every
/// `interval`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaduceusConfig {
    /// Caduceus's registration endpoint, e.g. `https://caduceus:6000/hook`.
    pub registration_url: String,
    /// Where Caduceus should deliver: brunnr's own `POST /events`, as Caduceus reaches it.
    pub hook_url: String,
    /// The secret Caduceus signs deliveries with (set `sources.wrp.secret` to the same).
    pub secret: Option<String>,
    /// Event types (regular expressions) to receive.
    pub events: Vec<String>,
    /// Device ids (regular expressions) to receive.
    pub device_ids: Vec<String>,
    /// Where Caduceus reports a cut-off.
    pub failure_url: Option<String>,
    /// How long one registration lasts; renewals come every `interval`, well before.
    #[serde(with = "serde_duration")]
    pub duration: Duration,
    #[serde(with = "serde_duration")]
    pub interval: Duration,
    /// `Authorization: Bearer` for the registration.
    pub token: Option<String>,
    /// `Authorization: Basic` for the registration (instead of `token`).
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Default for CaduceusConfig {
    fn default() -> Self {
        Self {
            registration_url: String::new(),
            hook_url: String::new(),
            secret: None,
            events: vec![".*".into()],
            device_ids: vec![".*".into()],
            failure_url: None,
            duration: Duration::from_secs(5 * 60),
            interval: Duration::from_secs(30),
            token: None,
            username: None,
            password: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinksConfig {
    pub nats: NatsSinkConfig,
    pub sqs: SqsSinkConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// The NATS server for `nats` destinations; absent: `sources.nats.url`; neither: no NATS norns.
    pub url: Option<String>,
    /// Messages buffered while disconnected; beyond it publishes fail and norns' queues fill.
    pub buffer: usize,
}

impl Default for NatsSinkConfig {
    fn default() -> Self {
        Self {
            url: None,
            buffer: 8192,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqsSinkConfig {
    /// The most one `SendMessageBatch` (and so one message) may carry.
    #[serde(with = "serde_size")]
    pub max_batch_bytes: u64,
}

impl Default for SqsSinkConfig {
    fn default() -> Self {
        Self {
            max_batch_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub nats_url: Option<String>,
}

impl Config {
    /// The NATS server `nats` destinations publish to, if any.
    pub fn nats_sink_url(&self) -> Option<&str> {
        self.sinks
            .nats
            .url
            .as_deref()
            .or(self.sources.nats.as_ref().map(|nats| nats.url.as_str()))
    }

    /// Reads `path` (or nothing: the defaults), applies `BRUNNR_…` variables from `env`, checks.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                parse_yaml(&text).map_err(|message| ConfigError::Yaml {
                    path: path.to_owned(),
                    message,
                })?
            }
            None => Value::Object(Default::default()),
        };
        for (name, value) in env {
            let Some(path) = name.strip_prefix("BRUNNR_") else {
                continue;
            };
            // Variables of the client commands, not configuration keys.
            if matches!(path, "URL" | "TOKEN" | "CONFIG" | "LOG") {
                continue;
            }
            apply_override(&mut tree, path, &value)
                .map_err(|message| ConfigError::Env { name, message })?;
        }
        let config: Config =
            serde_path_to_error::deserialize(tree).map_err(|error| ConfigError::Invalid {
                key: error.path().to_string(),
                message: error.inner().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            })
        };
        if self.delivery.queue_size == 0 {
            return invalid("delivery.queue_size", "must be at least 1");
        }
        if self.delivery.max_in_flight == 0 {
            return invalid("delivery.max_in_flight", "must be at least 1");
        }
        if self.server.max_events_in_flight == 0 {
            return invalid("server.max_events_in_flight", "must be at least 1");
        }
        if self.norns.max_duration.is_zero() {
            return invalid("norns.max_duration", "must be longer than 0s");
        }
        if self.live.session_buffer == 0 {
            return invalid("live.session_buffer", "must be at least 1");
        }
        if self.live.heartbeat.is_zero() {
            return invalid("live.heartbeat", "must be longer than 0s");
        }
        if self.live.heartbeat_timeout < self.live.heartbeat {
            return invalid("live.heartbeat_timeout", "must be at least live.heartbeat");
        }
        if self.live.history.commit_interval.is_zero() {
            return invalid("live.history.commit_interval", "must be longer than 0s");
        }
        if let Some(caduceus) = &self.sources.caduceus
            && !caduceus.registration_url.is_empty()
        {
            if caduceus.hook_url.is_empty() {
                return invalid("sources.caduceus.hook_url", "is needed to register");
            }
            if caduceus.interval.is_zero() || caduceus.duration <= caduceus.interval {
                return invalid(
                    "sources.caduceus.duration",
                    "must be longer than sources.caduceus.interval (renewals come before it lapses)",
                );
            }
        }
        if self.sinks.nats.buffer == 0 {
            return invalid("sinks.nats.buffer", "must be at least 1");
        }
        if self.sinks.sqs.max_batch_bytes == 0 {
            return invalid("sinks.sqs.max_batch_bytes", "must be at least 1");
        }
        if self.store.kind == StoreKind::Nats {
            return invalid(
                "store.kind",
                "the nats store (cluster mode) is not available yet; use `embedded`",
            );
        }
        self.auth.validate()?;
        if !self.auth.is_enabled() && !self.server.listen.ip().is_loopback() {
            return invalid(
                "auth",
                &format!(
                    "no credentials are configured, so brunnr may only listen on a loopback address, \
                     not {}. Configure `auth.tokens`, `auth.basic` or `auth.jwt` (see docs/configuration.md), \
                     or listen on 127.0.0.1",
                    self.server.listen
                ),
            );
        }
        Ok(())
    }
}

fn parse_yaml(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    let value: Value = serde_saphyr::from_str(text).map_err(|error| error.to_string())?;
    match value {
        Value::Null => Ok(Value::Object(Default::default())),
        Value::Object(_) => Ok(value),
        _ => Err("the top level must be a mapping".into()),
    }
}

/// Sets `SERVER__LISTEN=…` as `server.listen`. The value is read as YAML, so numbers, booleans and
/// lists (`[a, b]`) work; anything that is not valid YAML is taken as a plain string.
fn apply_override(tree: &mut Value, path: &str, raw: &str) -> Result<(), String> {
    let keys: Vec<String> = path.split("__").map(|key| key.to_lowercase()).collect();
    if keys.iter().any(|key| key.is_empty()) {
        return Err("empty key segment".into());
    }
    let value = match serde_saphyr::from_str::<Value>(raw) {
        Ok(Value::Null) | Err(_) => Value::String(raw.to_owned()),
        Ok(value) => value,
    };
    let mut node = tree;
    for key in &keys[..keys.len() - 1] {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        node = node
            .as_object_mut()
            .expect("made an object above")
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    if !node.is_object() {
        *node = Value::Object(Default::default());
    }
    node.as_object_mut()
        .expect("made an object above")
        .insert(keys[keys.len() - 1].clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("brunnr.yaml");
        std::fs::write(&path, yaml).unwrap();
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:6600");
        assert_eq!(config.store.path, PathBuf::from("./brunnr-data"));
        assert_eq!(config.norns.max_duration, Duration::from_secs(86400));
        assert_eq!(config.delivery.queue_size, 1000);
    }

    #[test]
    fn reads_durations_and_sizes() {
        let config = load(
            "server: {max_body: 64KiB}\ndelivery: {timeout: 1m30s, cut_off_period: 500ms}\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.server.max_body, 65536);
        assert_eq!(config.delivery.timeout, Duration::from_secs(90));
        assert_eq!(config.delivery.cut_off_period, Duration::from_millis(500));
    }

    #[test]
    fn errors_name_the_key() {
        let error = load("delivery: {timeout: 10x}\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("delivery.timeout"), "{error}");
        let error = load("delivery: {queue_sise: 3}\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("queue_sise"), "{error}");
        let error = load("server: {listen: nowhere}\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("server.listen"), "{error}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load(
            "delivery: {queue_size: 5}\n",
            &[
                ("BRUNNR_DELIVERY__QUEUE_SIZE", "7"),
                ("BRUNNR_NORNS__MAX_DURATION", "1h"),
                ("BRUNNR_DELIVERY__ALLOW_CIDRS", "[10.0.0.0/8]"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.delivery.queue_size, 7);
        assert_eq!(config.norns.max_duration, Duration::from_secs(3600));
        assert_eq!(config.delivery.allow_cidrs.len(), 1);
        let error = load("", &[("BRUNNR_DELIVERY__TIMEOUT", "soon")])
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("delivery.timeout"), "{error}");
    }

    #[test]
    fn refuses_public_listen_without_auth() {
        let error = load("server: {listen: \"0.0.0.0:6600\"}\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("auth.tokens"), "{error}");
        let config = load(
            "server: {listen: \"0.0.0.0:6600\"}\nauth: {tokens: [{token: t0k3n-long-enough, principal: a, roles: [admin]}]}\n",
            &[],
        );
        assert!(config.is_ok(), "{:?}", config.err());
    }
}
