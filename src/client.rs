//! The client commands of the `brunnr` binary: `norn create|list|get|delete`, `publish` and `tail`, talking
//! to a running server (`--url`/`BRUNNR_URL`, `--token`/`BRUNNR_TOKEN`). Answers are printed as
//! JSON; a server error is printed as it came and makes the command fail.

use anyhow::{Context, bail};

use crate::wrp::WrpMessage;

/// Where the server is and who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "BRUNNR_URL",
        default_value = "http://127.0.0.1:6600",
        global = true
    )]
    pub url: String,
    /// A token (static or JWT), sent as `Authorization: Bearer`.
    #[arg(long, env = "BRUNNR_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

/// `brunnr norn …`
#[derive(Debug, clap::Subcommand)]
pub enum NornCommand {
    /// Registers a norn (or updates yours for the same device and URL).
    Create {
        /// The device id (or other key) whose events to receive.
        #[arg(long)]
        device: String,
        /// The webhook URL events are POSTed to.
        #[arg(long)]
        webhook: String,
        /// wrp (msgpack), json or payload.
        #[arg(long, default_value = "wrp")]
        format: String,
        /// Signs deliveries (a `whsec_` secret is a Standard Webhooks key).
        #[arg(long)]
        secret: Option<String>,
        /// Told about dropped events.
        #[arg(long)]
        failure_url: Option<String>,
        /// How long the norn lives (Go-style).
        #[arg(long, default_value = "1h")]
        duration: String,
        /// A CEL expression over `event`.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Lists your norns.
    List,
    /// Shows one norn.
    Get { id: String },
    /// Deletes one norn.
    Delete { id: String },
}

/// `brunnr publish …`: posts one WRP SimpleEvent.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// The device the event is from (WRP `source`).
    #[arg(long)]
    pub device: String,
    /// The event, as in `event:<kind>` (`device-status/online`).
    #[arg(long, default_value = "device-status/online")]
    pub kind: String,
    /// The payload.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// Send WRP JSON instead of msgpack.
    #[arg(long)]
    pub json: bool,
}

/// `brunnr tail …`: prints a key's live events.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// The keys to follow (device ids, endpoint ids, access ids, inbox ids).
    #[arg(required = true)]
    pub keys: Vec<String>,
    /// First replay the events since this time (ms since the epoch; 0: all history).
    #[arg(long)]
    pub since: Option<i64>,
}

fn request(server: &ServerArgs, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", server.url.trim_end_matches('/'));
    let builder = client.request(method, url);
    match &server.token {
        Some(token) => builder.bearer_auth(token),
        None => builder,
    }
}

/// Sends, prints the answer, fails on an error status.
async fn send(builder: reqwest::RequestBuilder) -> anyhow::Result<()> {
    let response = builder
        .send()
        .await
        .context("cannot reach the brunnr server")?;
    let status = response.status();
    let text = response.text().await?;
    let shown = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or(text);
    if status.is_success() {
        if !shown.is_empty() {
            println!("{shown}");
        }
        Ok(())
    } else {
        eprintln!("{shown}");
        bail!("the server answered {status}")
    }
}

pub async fn norn(server: &ServerArgs, command: NornCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        NornCommand::Create {
            device,
            webhook,
            format,
            secret,
            failure_url,
            duration,
            filter,
        } => {
            let body = serde_json::json!({
                "deviceID": device,
                "destination": {"http": {"url": webhook, "format": format, "secret": secret, "failureURL": failure_url}},
                "duration": duration,
                "filter": filter,
            });
            send(request(server, Method::POST, "/norns").json(&body)).await
        }
        NornCommand::List => send(request(server, Method::GET, "/norns")).await,
        NornCommand::Get { id } => {
            send(request(server, Method::GET, &format!("/norns/{id}"))).await
        }
        NornCommand::Delete { id } => {
            send(request(server, Method::DELETE, &format!("/norns/{id}"))).await
        }
    }
}

pub async fn publish(server: &ServerArgs, args: PublishArgs) -> anyhow::Result<()> {
    let message = WrpMessage {
        msg_type: crate::wrp::SIMPLE_EVENT,
        source: args.device,
        dest: format!("event:{}", args.kind),
        transaction_uuid: Some(uuid::Uuid::now_v7().to_string()),
        content_type: Some(args.content_type),
        payload: Some(args.payload.into_bytes().into()),
        ..Default::default()
    };
    let (content_type, body) = if args.json {
        ("application/json", message.to_json())
    } else {
        ("application/msgpack", message.to_msgpack())
    };
    send(
        request(server, reqwest::Method::POST, "/events")
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

/// Follows `/v1/stream` over SSE and prints each event's envelope as one line of JSON until the
/// server ends the stream.
pub async fn tail(server: &ServerArgs, args: TailArgs) -> anyhow::Result<()> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for key in &args.keys {
        query.append_pair("key", key);
    }
    if let Some(since) = args.since {
        query.append_pair("since", &since.to_string());
    }
    let path = format!("/v1/stream?{}", query.finish());
    let mut response = request(server, reqwest::Method::GET, &path)
        .header("accept", "text/event-stream")
        .send()
        .await
        .context("cannot reach the brunnr server")?;
    let status = response.status();
    if !status.is_success() {
        eprintln!("{}", response.text().await.unwrap_or_default());
        bail!("the server answered {status}");
    }
    let mut frames = SseFrames::default();
    while let Some(chunk) = response.chunk().await? {
        frames.push(&chunk);
        while let Some(frame) = frames.next_frame() {
            for line in frame.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    println!("{data}");
                }
            }
        }
    }
    Ok(())
}

/// Splits an SSE byte stream into frames (the text before each blank line). Bytes are kept until
/// a frame is whole, so a character split across chunks stays whole.
#[derive(Default)]
pub struct SseFrames {
    buffer: Vec<u8>,
}

impl SseFrames {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next whole frame, without its blank line.
    pub fn next_frame(&mut self) -> Option<String> {
        let end = self.buffer.windows(2).position(|pair| pair == b"\n\n")?;
        let frame = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
        self.buffer.drain(..end + 2);
        Some(frame)
    }
}
