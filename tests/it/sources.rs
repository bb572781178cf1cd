//! The NATS sources against a real nats-server: Kaa Avro records and monit JSON in, events out
//! through the live streams; queue groups; NATS down at start and restarted.

use std::time::Duration;

use apache_avro::types::Value;
use brunnr::source::kaa::Record;
use serde_json::{Value as Json, json};

use crate::helpers::*;
use crate::servers;

fn with_nats(url: &str) -> brunnr::config::Config {
    let mut config = test_config();
    config.sources.nats = Some(brunnr::config::NatsSourceConfig {
        url: url.to_owned(),
        ..Default::default()
    });
    config
}

/// A Kaa record encoded with the vendored schema.
fn registered(endpoint: &str, timestamp: i64, timeout: i64) -> Vec<u8> {
    let (schema, _) = Record::Registered.schema();
    let value = Value::Record(vec![
        ("correlationId".into(), Value::String("corr-1".into())),
        ("timestamp".into(), Value::Long(timestamp)),
        ("timeout".into(), Value::Long(timeout)),
        ("appVersionName".into(), Value::String("v1".into())),
        ("endpointId".into(), Value::String(endpoint.into())),
        ("originatorReplicaId".into(), Value::String("epr-1".into())),
    ]);
    apache_avro::to_avro_datum(schema, value).unwrap()
}

const REGISTERED: &str = "kaa.v1.events.epr.endpoint.lifecycle.registered";

/// Headers of a subscriber asking for SSE.
fn subscriber() -> [(&'static str, &'static str); 2] {
    [
        ("authorization", "Bearer alice-token-0001"),
        ("accept", "text/event-stream"),
    ]
}

#[tokio::test]
async fn kaa_records_reach_the_endpoints_stream_and_garbage_is_counted() {
    let nats = servers::nats();
    let app = spawn_app(with_nats(&nats.url("nats"))).await;
    let mut stream =
        SseReader::new(SseReader::open(&app, "/v1/stream?key=ep-1", &subscriber()).await);
    wait_for_sessions(&app, "ep-1", 1).await;
    let producer = async_nats::connect(nats.url("nats")).await.unwrap();

    let now = brunnr::event::now_ms();
    producer
        .publish(REGISTERED, b"\x01\x02garbage".to_vec().into())
        .await
        .unwrap();
    // Expired (timestamp + timeout in the past): dropped and counted.
    producer
        .publish(REGISTERED, registered("ep-1", now - 60_000, 1_000).into())
        .await
        .unwrap();
    producer
        .publish(REGISTERED, registered("ep-1", now, 0).into())
        .await
        .unwrap();
    producer.flush().await.unwrap();

    let envelope = stream.envelope().await;
    assert_eq!(envelope["key"], "ep-1");
    assert_eq!(envelope["source"], "kaa");
    assert_eq!(envelope["kind"], "endpoint.lifecycle.registered");
    assert_eq!(envelope["payload"]["correlationId"], "corr-1");
    assert_eq!(envelope["payload"]["appVersionName"], "v1");
    let metrics = app.metrics().await;
    let rejected = |reason: &str| {
        metric(
            &metrics,
            "brunnr_events_rejected_total",
            &format!("source=\"kaa\",reason=\"{reason}\""),
        )
    };
    assert!(rejected("undecodable") >= 1.0);
    assert!(rejected("expired") >= 1.0);
    assert_eq!(app.readyz().await["nats_source"], "connected");
    app.stop().await;
}

#[tokio::test]
async fn monit_messages_fill_an_inbox_and_its_close_ends_the_sse_response() {
    let nats = servers::nats();
    let app = spawn_app(with_nats(&nats.url("nats"))).await;
    let mut stream = SseReader::new(
        SseReader::open(&app, "/events?stream=abc123", &[("x-auth-token", ALICE)]).await,
    );
    wait_for_sessions(&app, "abc123", 1).await;
    let producer = async_nats::connect(nats.url("nats")).await.unwrap();
    producer
        .publish("service.create", br#"{"id": "abc123"}"#.to_vec().into())
        .await
        .unwrap();
    let user = json!({"id": "build-1", "service": "web-abc123",
        "messages": [{"body": "creating network", "level": "INFO"}]});
    producer
        .publish("monitor.user", user.to_string().into())
        .await
        .unwrap();
    producer
        .publish(
            "service.create.done",
            br#"{"id": "abc123"}"#.to_vec().into(),
        )
        .await
        .unwrap();
    producer.flush().await.unwrap();

    let frame = stream.event().await.unwrap();
    assert!(
        frame.ends_with(
            "\nevent: monitor.user\ndata: {\"body\":\"creating network\",\"level\":\"INFO\"}\n\n"
        ),
        "{frame:?}"
    );
    let started = std::time::Instant::now();
    let done = stream.event().await.unwrap();
    assert!(done.contains("\nevent: done\n"), "{done:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed after monit's delay"
    );
    assert_eq!(stream.event().await, None, "the response ends");
    app.stop().await;
}

#[tokio::test]
async fn two_instances_in_one_queue_group_share_the_messages() {
    let nats = servers::nats();
    let a = spawn_app(with_nats(&nats.url("nats"))).await;
    let b = spawn_app(with_nats(&nats.url("nats"))).await;
    let mut stream_a =
        SseReader::new(SseReader::open(&a, "/v1/stream?key=ep-q", &subscriber()).await);
    let mut stream_b =
        SseReader::new(SseReader::open(&b, "/v1/stream?key=ep-q", &subscriber()).await);
    wait_for_sessions(&a, "ep-q", 1).await;
    wait_for_sessions(&b, "ep-q", 1).await;
    let producer = async_nats::connect(nats.url("nats")).await.unwrap();
    let sent = 40;
    for _ in 0..sent {
        producer
            .publish(
                REGISTERED,
                registered("ep-q", brunnr::event::now_ms(), 0).into(),
            )
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    // Count what each got until both fall silent.
    let mut counts = [0, 0];
    for (i, stream) in [&mut stream_a, &mut stream_b].into_iter().enumerate() {
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(1500), stream.event()).await
        {
            counts[i] += 1;
        }
    }
    assert_eq!(counts[0] + counts[1], sent, "each message once: {counts:?}");
    assert!(
        counts[0] > 0 && counts[1] > 0,
        "both took a share: {counts:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn nats_down_at_start_then_up_then_restarted() {
    let mut nats = servers::nats();
    nats.stop();
    // brunnr starts without NATS; it is not ready until NATS is there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = brunnr::Server::start(with_nats(&nats.url("nats")), listener)
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let readyz = || async {
        client
            .get(format!("{url}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(readyz().await, 503);

    nats.restart();
    let mut ready = false;
    for _ in 0..200 {
        if readyz().await == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready once NATS is up");

    // Restarted NATS: the subscription comes back by itself.
    nats.restart();
    let producer = async_nats::connect(nats.url("nats")).await.unwrap();
    let response = client
        .get(format!("{url}/v1/stream?key=ep-r"))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut stream = SseReader::new(response);
    // Publish until one arrives: the client resubscribes shortly after it reconnects.
    let mut got = None;
    for _ in 0..100 {
        producer
            .publish(
                REGISTERED,
                registered("ep-r", brunnr::event::now_ms(), 0).into(),
            )
            .await
            .unwrap();
        producer.flush().await.unwrap();
        if let Ok(Some(frame)) =
            tokio::time::timeout(Duration::from_millis(200), stream.event()).await
        {
            got = Some(frame);
            break;
        }
    }
    assert!(
        got.is_some_and(|frame| frame.contains("\"key\":\"ep-r\"")),
        "events flow after the restart"
    );
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn caduceus_registration_is_posted_renewed_and_retried() {
    let caduceus = Receiver::start().await;
    // The first attempt is refused; brunnr retries, then renews every interval.
    caduceus.script([Reply::Status(500)]);
    let mut config = test_config();
    config.sources.caduceus = Some(brunnr::config::CaduceusConfig {
        registration_url: format!("{}/hook", caduceus.url),
        hook_url: "http://brunnr.example:6600/events".into(),
        secret: Some("s3cret".into()),
        events: vec!["device-status.*".into()],
        device_ids: vec!["mac:.*".into()],
        failure_url: Some("http://brunnr.example:6600/cutoff".into()),
        duration: Duration::from_secs(2),
        interval: Duration::from_millis(300),
        username: Some("brunnr".into()),
        password: Some("pw".into()),
        ..Default::default()
    });
    let app = spawn_app(config).await;
    let received = caduceus.wait_for(3, Duration::from_secs(10)).await;
    for request in &received {
        assert_eq!(request.path, "/hook");
        assert_eq!(
            request.headers["authorization"], "Basic YnJ1bm5yOnB3",
            "Basic brunnr:pw"
        );
        let body: Json = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            json!({
                "config": {"url": "http://brunnr.example:6600/events", "content_type": "wrp", "secret": "s3cret"},
                "events": ["device-status.*"],
                "matcher": {"device_id": ["mac:.*"]},
                "failure_url": "http://brunnr.example:6600/cutoff",
                "duration": "2s",
            })
        );
    }
    // Renewals come about every interval (the first retry after the 500 sooner or later).
    let gap = received[2].at - received[1].at;
    assert!(
        gap >= Duration::from_millis(250) && gap < Duration::from_secs(2),
        "{gap:?}"
    );
    assert_eq!(app.readyz().await["caduceus"], "registered");
    app.stop().await;
}
