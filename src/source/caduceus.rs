//! Registration with Caduceus: brunnr asks Caduceus to deliver WRP events to its `POST /events`,
//! and renews that registration every `interval`, before it lapses (`duration`).
//!
//! The body is Caduceus's webhook registration: `config.url` (brunnr's hook), `config.content_type`
//! `wrp`, `config.secret`, `events`, `matcher.device_id`, `failure_url` and `duration` as Go-style
//! text. A refused or failed registration is logged, retried with a doubling backoff (at most
//! `interval`), and shown in `/readyz`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::CaduceusConfig;
use crate::duration::format_duration;

/// Where registration stands, for `/readyz`.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistrationState {
    Pending,
    Registered { at_ms: i64 },
    Failing { error: String },
}

/// The registration's state, shared with the API.
#[derive(Debug)]
pub struct Registration {
    state: Mutex<RegistrationState>,
}

impl Registration {
    pub fn state(&self) -> RegistrationState {
        self.state.lock().expect("never poisoned").clone()
    }

    fn set(&self, state: RegistrationState) {
        *self.state.lock().expect("never poisoned") = state;
    }
}

/// The registration body Caduceus expects.
pub fn registration_body(config: &CaduceusConfig) -> serde_json::Value {
    json!({
        "config": {
            "url": config.hook_url,
            "content_type": "wrp",
            "secret": config.secret.clone().unwrap_or_default(),
        },
        "events": config.events,
        "matcher": {"device_id": config.device_ids},
        "failure_url": config.failure_url.clone().unwrap_or_default(),
        "duration": format_duration(config.duration),
    })
}

/// Starts registering in the background, until `stop`.
pub fn start(config: CaduceusConfig, stop: CancellationToken) -> Arc<Registration> {
    let registration = Arc::new(Registration {
        state: Mutex::new(RegistrationState::Pending),
    });
    tokio::spawn(run(config, registration.clone(), stop));
    registration
}

async fn run(config: CaduceusConfig, registration: Arc<Registration>, stop: CancellationToken) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client builds");
    let body = registration_body(&config);
    let mut backoff = Duration::from_secs(1).min(config.interval);
    loop {
        let wait = match register(&client, &config, &body).await {
            Ok(()) => {
                tracing::debug!(url = %config.registration_url, "Registered with Caduceus.");
                registration.set(RegistrationState::Registered {
                    at_ms: crate::event::now_ms(),
                });
                backoff = Duration::from_secs(1).min(config.interval);
                config.interval
            }
            Err(error) => {
                tracing::warn!(url = %config.registration_url, %error, retry_in = ?backoff, "Caduceus registration failed.");
                registration.set(RegistrationState::Failing { error });
                let wait = backoff;
                backoff = (backoff * 2).min(config.interval);
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn register(
    client: &reqwest::Client,
    config: &CaduceusConfig,
    body: &serde_json::Value,
) -> Result<(), String> {
    let mut request = client.post(&config.registration_url).json(body);
    if let Some(token) = &config.token {
        request = request.bearer_auth(token);
    } else if let Some(user) = &config.username {
        request = request.basic_auth(user, config.password.as_deref());
    }
    let response = request.send().await.map_err(|error| error.to_string())?;
    match response.status() {
        reqwest::StatusCode::OK => Ok(()),
        status => Err(format!("Caduceus answered {status}")),
    }
}
