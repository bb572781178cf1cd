//! The test harness: a real brunnr on a free port with its own data directory, and real HTTP
//! receivers that record what they get and answer as a test scripts them.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use brunnr::config::Config;
use tokio::sync::{Notify, oneshot};

pub const ALICE: &str = "alice-token-0001";
pub const BOB: &str = "bob-token-000002";
pub const ADMIN: &str = "admin-token-0003";
pub const PUBLISHER: &str = "publisher-token-4";

/// A config for tests: loopback destinations allowed, quick timings, four principals.
pub fn test_config() -> Config {
    let yaml = format!(
        r#"
server: {{listen: "127.0.0.1:0", drain_timeout: 5s}}
norns: {{max_duration: 1h, expiry_sweep: 200ms}}
delivery: {{allow_private_destinations: true, timeout: 2s, backoff: 50ms, max_backoff: 2s, retries: 3}}
auth:
  tokens:
    - {{token: {ALICE}, principal: alice, roles: [subscribe]}}
    - {{token: {BOB}, principal: bob, roles: [subscribe], keys: ["mac:*"]}}
    - {{token: {ADMIN}, principal: root, roles: [admin]}}
    - {{token: {PUBLISHER}, principal: caduceus, roles: [publish]}}
"#
    );
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("brunnr.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut config = Config::load(Some(&path), std::iter::empty()).unwrap();
    config.store.path = dir.join("data");
    config
}

/// A running brunnr.
pub struct TestApp {
    pub url: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    /// The running server's hub, for events from sources that have no HTTP route (monit).
    pub hub: std::sync::Arc<brunnr::hub::Hub>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), brunnr::RunError>>>,
}

pub async fn spawn_app(config: Config) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, stop) = oneshot::channel::<()>();
    let data_dir = config.store.path.clone();
    let server = brunnr::Server::start(config, listener).await.unwrap();
    let hub = server.hub();
    let handle = tokio::spawn(server.run(async move {
        let _ = stop.await;
    }));
    let app = TestApp {
        url: format!("http://{addr}"),
        client: reqwest::Client::new(),
        data_dir,
        hub,
        shutdown: Some(shutdown),
        handle: Some(handle),
    };
    // The listener is bound before `run` starts; wait until it serves.
    for _ in 0..100 {
        if let Ok(response) = app.client.get(format!("{}/readyz", app.url)).send().await
            && response.status() == 200
        {
            return app;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("brunnr did not become ready");
}

impl TestApp {
    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.take().unwrap().send(()).ok();
        self.handle.take().unwrap().await.unwrap().unwrap();
    }

    pub fn post_json(
        &self,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&body)
    }

    /// `GET path` as `token`.
    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Creates a norn and returns the answer's status and body.
    pub async fn create_norn(
        &self,
        token: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let response = self.post_json("/norns", token, body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `GET /norns` as `token`.
    pub async fn list_norns(&self, token: &str) -> Vec<serde_json::Value> {
        let response = self.get("/norns", token).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Posts a WRP event as msgpack.
    pub async fn publish(&self, message: &brunnr::wrp::WrpMessage) -> reqwest::Response {
        self.client
            .post(format!("{}/events", self.url))
            .bearer_auth(PUBLISHER)
            .header("content-type", "application/msgpack")
            .body(message.to_msgpack())
            .send()
            .await
            .unwrap()
    }

    /// `GET /readyz`'s body.
    pub async fn readyz(&self) -> serde_json::Value {
        self.client
            .get(format!("{}/readyz", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// A metric's value in Prometheus text (0 if absent), matched by name and label text.
pub use brunnr::metrics::sum_samples as metric;

/// A norn body for `device` delivering to `url`.
pub fn norn_body(device: &str, url: &str) -> serde_json::Value {
    serde_json::json!({"deviceID": device, "destination": {"http": {"url": url}}, "duration": "10m"})
}

/// A WRP SimpleEvent from `device`.
pub fn event(device: &str, kind: &str, payload: &str) -> brunnr::wrp::WrpMessage {
    brunnr::wrp::WrpMessage {
        msg_type: 4,
        source: device.into(),
        dest: format!("event:{kind}"),
        transaction_uuid: Some(uuid::Uuid::now_v7().to_string()),
        content_type: Some("application/json".into()),
        payload: Some(Bytes::from(payload.to_owned())),
        ..Default::default()
    }
}

/// What a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

/// How a receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// 429 or 503 with a `Retry-After` in seconds.
    RetryAfter(u16, u64),
    /// A redirect to `location`.
    Redirect(String),
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    hang_all: Mutex<bool>,
    arrived: Notify,
    release: Notify,
}

/// A real HTTP server that records every request.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_on(0).await
    }

    /// A receiver on a given port (0: any free one).
    pub async fn start_on(port: u16) -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, state }
    }

    /// The next requests are answered with these replies, in order; then 200s.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Every request hangs until `release`.
    pub fn hang_all(&self, hang: bool) {
        *self.state.hang_all.lock().unwrap() = hang;
        if !hang {
            self.state.release.notify_waiters();
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (or panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("expected {n} requests at {}, got {}", self.url, got.len());
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    });
    state.arrived.notify_waiters();
    let hang = *state.hang_all.lock().unwrap();
    if hang {
        let released = state.release.notified();
        if *state.hang_all.lock().unwrap() {
            released.await;
        }
        return StatusCode::OK.into_response();
    }
    let reply = state.script.lock().unwrap().pop_front();
    match reply {
        None => StatusCode::OK.into_response(),
        Some(Reply::Status(code)) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(Reply::RetryAfter(code, seconds)) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", seconds.to_string())],
        )
            .into_response(),
        Some(Reply::Redirect(location)) => {
            (StatusCode::FOUND, [("location", location)]).into_response()
        }
    }
}

/// How long a live stream may stay silent before a test fails.
pub const STREAM_WAIT: Duration = Duration::from_secs(10);

/// An SSE response read as it streams.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    pub async fn open(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = app.client.get(format!("{}{path}", app.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    pub fn new(response: reqwest::Response) -> SseReader {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next frame, blank line included; `None` when the response ends.
    pub async fn frame(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame = self.buffer[..end + 2].to_owned();
                self.buffer.drain(..end + 2);
                return Some(frame);
            }
            let chunk = tokio::time::timeout(STREAM_WAIT, self.response.chunk())
                .await
                .expect("a chunk within the wait")
                .expect("the response reads");
            match chunk {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => {
                    assert!(
                        self.buffer.is_empty(),
                        "a partial frame at the end: {:?}",
                        self.buffer
                    );
                    return None;
                }
            }
        }
    }

    /// The next frame that is not a `: ping` comment.
    pub async fn event(&mut self) -> Option<String> {
        loop {
            match self.frame().await {
                Some(frame) if frame == ": ping\n\n" => continue,
                other => return other,
            }
        }
    }

    /// The next event's `data:` as JSON (a `/v1/stream` envelope).
    pub async fn envelope(&mut self) -> serde_json::Value {
        let frame = self.event().await.expect("the stream is open");
        let data = frame
            .lines()
            .find_map(|line| line.strip_prefix("data: "))
            .expect("a data line");
        serde_json::from_str(data).unwrap()
    }
}

/// Waits until `key` has `n` live sessions (a session registers after its announcement).
pub async fn wait_for_sessions(app: &TestApp, key: &str, n: usize) {
    for _ in 0..200 {
        let clients = app.hub.live().clients();
        if clients.iter().any(|(k, count)| k == key && *count == n)
            || (n == 0 && !clients.iter().any(|(k, _)| k == key))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{key} never had {n} sessions: {:?}",
        app.hub.live().clients()
    );
}
