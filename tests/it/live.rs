//! Live delivery with real clients over TCP: tokio-tungstenite WebSockets, reqwest reading SSE
//! responses as they stream, and a headless Chromium `EventSource`.

use std::time::Duration;

use brunnr::event::Event;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::helpers::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

/// Opens a WebSocket on `path`, with `token` as a Bearer header when given.
async fn ws_connect(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let url = format!("{}{path}", app.url.replacen("http", "ws", 1));
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

/// A notifier session for `access_id`, announced with `timestamp`.
async fn notifier(app: &TestApp, token: &str, access_id: &str, timestamp: i64) -> Ws {
    let mut ws = ws_connect(app, "/subscribe_to_events", Some(token))
        .await
        .unwrap();
    let announcement = json!({"access_id": access_id, "timestamp": timestamp});
    ws.send(Message::text(announcement.to_string()))
        .await
        .unwrap();
    ws
}

/// The next text frame (pings and pongs skipped), as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within the wait")
            .expect("the socket is open")
            .expect("a good frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the close frame and returns its code and reason.
async fn next_close(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a close within the wait")
        {
            Some(Ok(Message::Close(Some(frame)))) => return (frame.code, frame.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a close frame"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => panic!("the socket failed before a close frame: {error}"),
        }
    }
}

/// Reads until the close frame and checks its code and reason.
async fn expect_close(ws: &mut Ws, code: CloseCode, reason: &str) {
    assert_eq!(next_close(ws).await, (code, reason.to_owned()));
}

/// Nothing but pings arrives for `wait`.
async fn assert_quiet(ws: &mut Ws, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(message) = tokio::time::timeout_at(deadline, ws.next()).await {
        match message {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected nothing, got {other:?}"),
        }
    }
}

async fn push(app: &TestApp, events: Value) {
    let response = app
        .post_json("/push_events", PUBLISHER, events)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!(true));
}

fn live_config(extra: &str) -> brunnr::config::Config {
    let mut config = test_config();
    let overrides: Value = serde_json::from_str(extra).unwrap();
    let mut tree = serde_json::to_value(&config).unwrap();
    merge(&mut tree, overrides);
    config = serde_json::from_value(tree).unwrap();
    config
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (into, from) => *into = from,
    }
}

#[tokio::test]
async fn notifier_replays_since_timestamp_then_one_frame_per_push() {
    let app = spawn_app(test_config()).await;
    push(
        &app,
        json!([
            {"accessid": "client1", "created_at": 10, "payload": "old"},
            {"accessid": "client1", "created_at": 20, "payload": "kept"},
            {"accessid": "client2", "created_at": 25, "payload": "not yours"},
            {"accessid": "client1", "created_at": 30, "payload": {"json": true}},
        ]),
    )
    .await;

    let mut ws = notifier(&app, ALICE, "client1", 20).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!([
            {"accessid": "client1", "created_at": 20, "payload": "kept"},
            {"accessid": "client1", "created_at": 30, "payload": {"json": true}},
        ])
    );
    wait_for_sessions(&app, "client1", 1).await;
    push(
        &app,
        json!([
            {"accessid": "client2", "created_at": 40, "payload": "other user"},
            {"accessid": "client1", "created_at": 41, "payload": "a"},
            {"accessid": "client1", "created_at": 42, "payload": "b"},
        ]),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!([
            {"accessid": "client1", "created_at": 41, "payload": "a"},
            {"accessid": "client1", "created_at": 42, "payload": "b"},
        ])
    );
    push(
        &app,
        json!([{"accessid": "client1", "created_at": 50, "payload": "c"}]),
    )
    .await;
    assert_eq!(next_json(&mut ws).await[0]["payload"], "c");

    // A session with nothing stored since its timestamp gets no replay frame, only pushes.
    let mut late = notifier(&app, ALICE, "client1", 1_000_000).await;
    wait_for_sessions(&app, "client1", 2).await;
    push(
        &app,
        json!([{"accessid": "client1", "created_at": 60, "payload": "d"}]),
    )
    .await;
    assert_eq!(next_json(&mut late).await[0]["payload"], "d");
    assert_eq!(next_json(&mut ws).await[0]["payload"], "d");

    let metrics = app.metrics().await;
    assert!(metric(&metrics, "brunnr_live_sessions", "transport=\"websocket\"") >= 2.0);
    assert!(
        metric(
            &metrics,
            "brunnr_events_received_total",
            "source=\"notifier\""
        ) >= 8.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_bad_announcement_is_refused_with_1008() {
    let app = spawn_app(test_config()).await;
    for bad in [
        "not json",
        r#"{"timestamp": 5}"#,
        r#"{"access_id": "", "timestamp": 1}"#,
    ] {
        let mut ws = ws_connect(&app, "/subscribe_to_events", Some(ALICE))
            .await
            .unwrap();
        ws.send(Message::text(bad)).await.unwrap();
        let text = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(text, Message::text("Wrong JSON announcement"), "for {bad}");
        assert_eq!(next_close(&mut ws).await.0, CloseCode::Policy, "for {bad}");
    }
    app.stop().await;
}

#[tokio::test]
async fn notifier_credentials_by_header_query_or_announcement() {
    let app = spawn_app(test_config()).await;
    // Bad credentials at the upgrade: 401 before any WebSocket.
    match ws_connect(&app, "/subscribe_to_events", Some("wrong-token")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    match ws_connect(&app, "/subscribe_to_events?token=wrong", None).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // None at the upgrade, none in the announcement: 1008.
    let mut ws = ws_connect(&app, "/subscribe_to_events", None)
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"access_id": "u1", "timestamp": 0}).to_string(),
    ))
    .await
    .unwrap();
    expect_close(&mut ws, CloseCode::Policy, "unauthorized").await;
    // A key the principal may not read (bob reads mac:* only): 1008.
    let mut ws = notifier(&app, BOB, "u1", 0).await;
    expect_close(&mut ws, CloseCode::Policy, "forbidden").await;

    push(
        &app,
        json!([{"accessid": "u1", "created_at": 5, "payload": "hi"}]),
    )
    .await;
    // The token in the announcement, or in the query.
    let mut ws = ws_connect(&app, "/subscribe_to_events", None)
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"access_id": "u1", "timestamp": 0, "token": ALICE}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await[0]["payload"], "hi");
    let mut ws = ws_connect(&app, &format!("/subscribe_to_events?token={ALICE}"), None)
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"access_id": "u1", "timestamp": 0}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await[0]["payload"], "hi");
    assert!(
        metric(
            &app.metrics().await,
            "brunnr_live_refused_total",
            "reason=\"auth\""
        ) >= 3.0
    );
    app.stop().await;
}

#[tokio::test]
async fn drop_user_closes_that_users_sessions_with_1000() {
    let app = spawn_app(test_config()).await;
    let mut a1 = notifier(&app, ALICE, "dropme", 0).await;
    let mut a2 = notifier(&app, ALICE, "dropme", 0).await;
    let mut other = notifier(&app, ALICE, "stays", 0).await;
    wait_for_sessions(&app, "dropme", 2).await;
    wait_for_sessions(&app, "stays", 1).await;

    // Only an admin may drop.
    let response = app
        .post_json("/drop_user", ALICE, json!({"drop_access_id": "dropme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = app
        .post_json("/drop_user", ADMIN, json!({"drop_access_id": "dropme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!(true));
    expect_close(&mut a1, CloseCode::Normal, "close").await;
    expect_close(&mut a2, CloseCode::Normal, "close").await;

    push(
        &app,
        json!([{"accessid": "stays", "created_at": 1, "payload": "still here"}]),
    )
    .await;
    assert_eq!(next_json(&mut other).await[0]["payload"], "still here");
    wait_for_sessions(&app, "dropme", 0).await;
    let clients: Value = app.get("/clients", ADMIN).await.json().await.unwrap();
    assert_eq!(clients, json!([{"key": "stays", "sessions": 1}]));
    app.stop().await;
}

#[tokio::test]
async fn pings_keep_a_reading_client_and_a_silent_one_is_closed() {
    let app = spawn_app(live_config(
        r#"{"live": {"heartbeat": "100ms", "heartbeat_timeout": "300ms"}}"#,
    ))
    .await;
    let mut reading = notifier(&app, ALICE, "hb", 0).await;
    let mut silent = notifier(&app, ALICE, "hb", 0).await;
    wait_for_sessions(&app, "hb", 2).await;

    // The reading client sees pings (and its library answers them) for well past the timeout.
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
    while let Ok(message) = tokio::time::timeout_at(deadline, reading.next()).await {
        match message {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 4, "{pings} pings");
    push(
        &app,
        json!([{"accessid": "hb", "created_at": 1, "payload": "alive"}]),
    )
    .await;
    assert_eq!(next_json(&mut reading).await[0]["payload"], "alive");

    // The silent one never read, so never answered: closed for the missing pong.
    let (code, reason) = next_close(&mut silent).await;
    assert_eq!((code, reason.as_str()), (CloseCode::Away, "no pong"));
    assert!(metric(&app.metrics().await, "brunnr_live_pong_timeouts_total", "") >= 1.0);
    app.stop().await;
}

#[tokio::test]
async fn connection_and_per_key_limits() {
    let app = spawn_app(live_config(
        r#"{"live": {"max_connections": 3, "max_sessions_per_key": 2}}"#,
    ))
    .await;
    let _a = notifier(&app, ALICE, "limited", 0).await;
    let _b = notifier(&app, ALICE, "limited", 0).await;
    wait_for_sessions(&app, "limited", 2).await;
    // A third session for the key is refused after its announcement.
    let mut c = notifier(&app, ALICE, "limited", 0).await;
    expect_close(&mut c, CloseCode::Policy, "too many sessions").await;
    drop(c);
    // Its connection slot comes back once it is gone; then a third connection is allowed, a
    // fourth is not: 503 at the upgrade.
    let mut third = None;
    for _ in 0..100 {
        if let Ok(ws) = ws_connect(&app, "/subscribe_to_events", Some(ALICE)).await {
            third = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(third.is_some());
    match ws_connect(&app, "/subscribe_to_events", Some(ALICE)).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    let response = app
        .client
        .get(format!("{}/v1/stream?key=x", app.url))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "too_many_connections");
    app.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_1013_while_others_keep_receiving() {
    let app = spawn_app(live_config(
        r#"{"live": {"session_buffer": 4}, "server": {"max_body": 4194304}}"#,
    ))
    .await;
    let mut fast = notifier(&app, ALICE, "busy", 0).await;
    let mut slow = notifier(&app, ALICE, "busy", 0).await;
    wait_for_sessions(&app, "busy", 2).await;

    // The slow client reads nothing while 60 MB go out: its socket buffers fill, then its
    // session's buffer, and brunnr closes it.
    let payload = "x".repeat(256 * 1024);
    let pushes = 240;
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < pushes {
            let frame = next_json(&mut fast).await;
            seen += frame.as_array().unwrap().len();
        }
        seen
    });
    for i in 0..pushes {
        push(
            &app,
            json!([{"accessid": "busy", "created_at": i, "payload": payload}]),
        )
        .await;
    }
    assert_eq!(reader.await.unwrap(), pushes);
    assert!(
        metric(
            &app.metrics().await,
            "brunnr_live_slow_consumer_closes_total",
            "transport=\"websocket\""
        ) >= 1.0
    );
    wait_for_sessions(&app, "busy", 0).await;

    // Reading now, it finds what was already in its buffers, then the close frame.
    let mut frames = 0;
    let close = loop {
        match tokio::time::timeout(WAIT, slow.next())
            .await
            .expect("not stuck")
        {
            Some(Ok(Message::Text(_))) => frames += 1,
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("the slow socket ended without a close frame: {other:?}"),
        }
    };
    assert!(frames < pushes, "the slow client got {frames} of {pushes}");
    let close = close.expect("a close frame with a code");
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Again, "slow consumer")
    );
    app.stop().await;
}

fn monit_event(inbox: &str, body: &str) -> Event {
    Event {
        id: Event::new_id(),
        key: inbox.into(),
        kind: "monitor.user".into(),
        source: "monit",
        time_ms: brunnr::event::now_ms(),
        content_type: "application/json".into(),
        payload: serde_json::to_vec(&json!({"body": body, "level": "INFO"}))
            .unwrap()
            .into(),
        wrp: None,
    }
}

#[tokio::test]
async fn monit_sse_frames_are_exact_and_the_inbox_close_ends_the_response() {
    let app = spawn_app(live_config(r#"{"live": {"heartbeat": "200ms"}}"#)).await;
    let mut sse = SseReader::new(
        SseReader::open(&app, "/events?stream=inbox1", &[("x-auth-token", ALICE)]).await,
    );
    wait_for_sessions(&app, "inbox1", 1).await;
    // With nothing to send, pings.
    assert_eq!(sse.frame().await.unwrap(), ": ping\n\n");

    let first = monit_event("inbox1", "creating network");
    let second = monit_event("inbox1", "line one\nline two");
    let (first_id, second_id) = (first.id, second.id);
    app.hub.publish(first);
    app.hub.publish(monit_event("inbox2", "someone else's"));
    app.hub.publish(second);
    assert_eq!(
        sse.event().await.unwrap(),
        format!(
            "id: {first_id}\nevent: monitor.user\ndata: {{\"body\":\"creating network\",\"level\":\"INFO\"}}\n\n"
        )
    );
    assert_eq!(
        sse.event().await.unwrap(),
        format!(
            "id: {second_id}\nevent: monitor.user\ndata: {{\"body\":\"line one\\nline two\",\"level\":\"INFO\"}}\n\n"
        )
    );
    app.hub.close_inbox("inbox1", brunnr::hub::InboxClose::Done);
    let done = sse.event().await.unwrap();
    assert!(
        done.starts_with("id: ")
            && done.ends_with("\nevent: done\ndata: {\"stream\":\"inbox1\"}\n\n"),
        "{done:?}"
    );
    assert_eq!(sse.event().await, None, "the response ends after done");

    // Last-Event-ID: what followed that event, up to the close, then the end.
    let mut replay = SseReader::new(
        SseReader::open(
            &app,
            "/events?stream=inbox1",
            &[
                ("authorization", &format!("Bearer {ALICE}")),
                ("last-event-id", &first_id.to_string()),
            ],
        )
        .await,
    );
    assert!(
        replay
            .event()
            .await
            .unwrap()
            .starts_with(&format!("id: {second_id}\n"))
    );
    assert!(replay.event().await.unwrap().contains("event: done\n"));
    assert_eq!(replay.event().await, None);

    // Connecting to an inbox that is already closed says so at once.
    let mut late = SseReader::new(
        SseReader::open(&app, "/events?stream=inbox1", &[("x-auth-token", ALICE)]).await,
    );
    assert!(late.event().await.unwrap().contains("event: done\n"));
    assert_eq!(late.event().await, None);

    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            "brunnr_live_replayed_events_total",
            "transport=\"sse\""
        ) >= 3.0
    );
    app.stop().await;
}

#[tokio::test]
async fn monit_errors_no_stream_and_no_credentials() {
    let app = spawn_app(test_config()).await;
    let response = SseReader::open(&app, "/events", &[("x-auth-token", ALICE)]).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["detail"], "Please specify a stream!");
    let response = SseReader::open(&app, "/events?stream=x", &[]).await;
    assert_eq!(response.status(), 401);
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());
    let response = SseReader::open(&app, "/events?stream=x", &[("x-auth-token", "nope")]).await;
    assert_eq!(response.status(), 401);
    let response = SseReader::open(
        &app,
        "/events?stream=x",
        &[("x-auth-token", ALICE), ("last-event-id", "garbage")],
    )
    .await;
    assert_eq!(response.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn v1_stream_over_sse_and_websocket_with_key_globs_and_replay() {
    let app = spawn_app(test_config()).await;
    let device = "mac:112233445566";
    let before = event(device, "device-status/online", r#"{"n":1}"#);
    assert_eq!(app.publish(&before).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let since = brunnr::event::now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        app.publish(&event(device, "device-status/online", r#"{"n":2}"#))
            .await
            .status(),
        202
    );

    // bob may read mac:* only.
    let forbidden = SseReader::open(
        &app,
        "/v1/stream?key=mac:112233445566&key=client9",
        &[
            ("authorization", &format!("Bearer {BOB}")),
            ("accept", "text/event-stream"),
        ],
    )
    .await;
    assert_eq!(forbidden.status(), 403);
    let unauthorised = SseReader::open(
        &app,
        "/v1/stream?key=mac:112233445566",
        &[("accept", "text/event-stream")],
    )
    .await;
    assert_eq!(unauthorised.status(), 401);
    let not_acceptable = SseReader::open(
        &app,
        "/v1/stream?key=mac:112233445566",
        &[("authorization", &format!("Bearer {BOB}"))],
    )
    .await;
    assert_eq!(not_acceptable.status(), 406);

    // SSE, replay since a time: only the second event, as an envelope.
    let path = format!("/v1/stream?key=MAC:11:22:33:44:55:66&since={since}");
    let mut sse = SseReader::new(
        SseReader::open(
            &app,
            &path,
            &[
                ("authorization", &format!("Bearer {BOB}")),
                ("accept", "text/event-stream"),
            ],
        )
        .await,
    );
    let frame = sse.event().await.unwrap();
    let (id_line, data) = frame.trim_end().split_once('\n').unwrap();
    let envelope: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(id_line, format!("id: {}", envelope["id"].as_str().unwrap()));
    assert_eq!(envelope["key"], device);
    assert_eq!(envelope["source"], "wrp");
    assert_eq!(envelope["kind"], "device-status/online");
    assert_eq!(envelope["payload"], json!({"n": 2}));
    let second_id = envelope["id"].as_str().unwrap().to_owned();

    // WebSocket, replay after an id (nothing), then live: one envelope per frame.
    let mut ws_request = format!(
        "{}/v1/stream?key={device}",
        app.url.replacen("http", "ws", 1)
    )
    .into_client_request()
    .unwrap();
    ws_request
        .headers_mut()
        .insert("authorization", format!("Bearer {BOB}").parse().unwrap());
    ws_request
        .headers_mut()
        .insert("last-event-id", second_id.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request).await.unwrap();
    wait_for_sessions(&app, device, 2).await;
    assert_eq!(
        app.publish(&event(device, "device-status/offline", r#"{"n":3}"#))
            .await
            .status(),
        202
    );
    let live = next_json(&mut ws).await;
    assert_eq!(
        (live["kind"].as_str(), live["payload"]["n"].as_i64()),
        (Some("device-status/offline"), Some(3))
    );
    let live_sse = sse.event().await.unwrap();
    assert!(live_sse.contains(live["id"].as_str().unwrap()));
    assert_quiet(&mut ws, Duration::from_millis(200)).await;
    app.stop().await;
}

#[tokio::test]
async fn history_survives_a_restart() {
    let config = test_config();
    let app = spawn_app(config.clone()).await;
    push(
        &app,
        json!([
            {"accessid": "restart", "created_at": 100, "payload": "one"},
            {"accessid": "restart", "created_at": 200, "payload": "two"},
        ]),
    )
    .await;
    app.stop().await;

    let app = spawn_app(config).await;
    let mut ws = notifier(&app, ALICE, "restart", 150).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!([{"accessid": "restart", "created_at": 200, "payload": "two"}])
    );
    app.stop().await;
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001_and_ends_sse() {
    let app = spawn_app(test_config()).await;
    let mut ws = notifier(&app, ALICE, "bye", 0).await;
    let mut sse = SseReader::new(
        SseReader::open(&app, "/events?stream=bye", &[("x-auth-token", ALICE)]).await,
    );
    wait_for_sessions(&app, "bye", 2).await;
    let stopping = tokio::spawn(app.stop());
    assert_eq!(next_close(&mut ws).await.0, CloseCode::Away);
    assert_eq!(sse.event().await, None);
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
}

/// Where Chromium is: `BRUNNR_CHROMIUM`, else `chromium` on the PATH (Debian's package).
fn chromium() -> std::path::PathBuf {
    let path = std::env::var_os("BRUNNR_CHROMIUM")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
                    .find(|candidate| candidate.is_file())
            })
        });
    path.expect("chromium is needed for the browser test: apt-get install chromium (or set BRUNNR_CHROMIUM)")
}

#[tokio::test]
async fn a_browser_eventsource_reads_v1_stream() {
    let app = spawn_app(live_config(r#"{"server": {"cors_origins": ["*"]}}"#)).await;
    let device = "mac:aabbccddeeff";
    assert_eq!(
        app.publish(&event(
            device,
            "device-status/online",
            r#"{"seen":"replayed"}"#
        ))
        .await
        .status(),
        202
    );

    // The page, from another origin, reports each message it gets back to this server.
    let (reports_tx, mut reports) = tokio::sync::mpsc::unbounded_channel::<String>();
    let page = format!(
        r#"<!doctype html><script>
const source = new EventSource("{}/v1/stream?key={device}&since=0&token={ALICE}");
source.onmessage = (message) => fetch("/report", {{method: "POST", body: message.data}});
source.onerror = () => fetch("/report", {{method: "POST", body: "error"}});
</script>"#,
        app.url
    );
    let site = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(page) }),
        )
        .route(
            "/report",
            axum::routing::post(move |body: String| async move {
                reports_tx.send(body).ok();
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, site).await.unwrap() });

    let profile = tempfile::tempdir().unwrap();
    let _browser = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&site_url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");

    let next_report = async |reports: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
        let report = tokio::time::timeout(Duration::from_secs(60), reports.recv())
            .await
            .expect("the page reports within a minute")
            .unwrap();
        serde_json::from_str::<Value>(&report)
            .unwrap_or_else(|_| panic!("the page reported {report:?}"))
    };
    let replayed = next_report(&mut reports).await;
    assert_eq!(
        (
            replayed["key"].as_str(),
            replayed["payload"]["seen"].as_str()
        ),
        (Some(device), Some("replayed"))
    );
    wait_for_sessions(&app, device, 1).await;
    assert_eq!(
        app.publish(&event(device, "device-status/online", r#"{"seen":"live"}"#))
            .await
            .status(),
        202
    );
    let live = next_report(&mut reports).await;
    assert_eq!(live["payload"]["seen"], "live");
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_during_its_replay_is_closed() {
    let app = spawn_app(live_config(
        r#"{"live": {"heartbeat": "100ms", "heartbeat_timeout": "300ms", "history": {"max_bytes": "1GiB"}}, "server": {"max_body": 4194304}}"#,
    ))
    .await;
    let payload = "y".repeat(512 * 1024);
    for i in 0..40 {
        push(
            &app,
            json!([{"accessid": "stall", "created_at": i, "payload": payload}]),
        )
        .await;
    }
    let before = metric(
        &app.metrics().await,
        "brunnr_live_slow_consumer_closes_total",
        "transport=\"websocket\"",
    );
    // 20 MB of replay to a client that reads nothing: the write stalls, and no new event comes to
    // fill its buffer. The stall alone closes it.
    let _silent = notifier(&app, ALICE, "stall", 0).await;
    let mut closed = false;
    for _ in 0..100 {
        let after = metric(
            &app.metrics().await,
            "brunnr_live_slow_consumer_closes_total",
            "transport=\"websocket\"",
        );
        if after > before && app.hub.live().clients().is_empty() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        closed,
        "the stalled session is still open: {:?}",
        app.hub.live().clients()
    );
    app.stop().await;
}

#[tokio::test]
async fn shutdown_is_bounded_by_an_sse_client_that_stopped_reading() {
    let app = spawn_app(live_config(
        r#"{"server": {"drain_timeout": "1s", "max_body": 4194304}}"#,
    ))
    .await;
    let stalled = SseReader::open(
        &app,
        "/v1/stream?key=stuck",
        &[
            ("authorization", &format!("Bearer {ALICE}")),
            ("accept", "text/event-stream"),
        ],
    )
    .await;
    assert_eq!(stalled.status(), 200);
    wait_for_sessions(&app, "stuck", 1).await;
    let payload = "z".repeat(512 * 1024);
    for i in 0..40 {
        push(
            &app,
            json!([{"accessid": "stuck", "created_at": i, "payload": payload}]),
        )
        .await;
    }
    // The response is blocked on a full socket, never polled again: stop still returns.
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("shutdown finishes within the drain timeout and a margin");
    drop(stalled);
}

#[tokio::test]
async fn a_slow_sse_consumer_is_taken_off_its_key_and_its_response_ends() {
    let app = spawn_app(live_config(
        r#"{"live": {"session_buffer": 4}, "server": {"max_body": 4194304}}"#,
    ))
    .await;
    let headers = [
        ("authorization", format!("Bearer {ALICE}")),
        ("accept", "text/event-stream".into()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut slow = SseReader::new(SseReader::open(&app, "/v1/stream?key=sse-busy", &headers).await);
    let mut fast = SseReader::new(SseReader::open(&app, "/v1/stream?key=sse-busy", &headers).await);
    wait_for_sessions(&app, "sse-busy", 2).await;
    let payload = "s".repeat(256 * 1024);
    let pushes = 120;
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < pushes {
            fast.event().await.expect("the fast stream stays open");
            seen += 1;
        }
        fast
    });
    for i in 0..pushes {
        push(
            &app,
            json!([{"accessid": "sse-busy", "created_at": i, "payload": payload}]),
        )
        .await;
    }
    let _fast = reader.await.unwrap();
    // The slow one was taken off the key as soon as its buffer filled...
    wait_for_sessions(&app, "sse-busy", 1).await;
    // ...and reading now, it finds what was buffered, then the end of the response.
    let mut frames = 0;
    while slow.event().await.is_some() {
        frames += 1;
    }
    assert!(frames < pushes, "the slow client got {frames} of {pushes}");
    assert!(
        metric(
            &app.metrics().await,
            "brunnr_live_slow_consumer_closes_total",
            "transport=\"sse\""
        ) >= 1.0
    );
    app.stop().await;
}
