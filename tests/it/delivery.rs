//! Webhook delivery: signatures, retries, redirects, the SSRF guard, overflow and isolation.

use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;

use crate::helpers::*;

const DEVICE: &str = "mac:112233445566";

#[tokio::test]
async fn deliveries_are_signed_both_ways() {
    let app = spawn_app(test_config()).await;
    let receiver = Receiver::start().await;
    // A Standard Webhooks secret (whsec_ + base64 key) and a plain one.
    let key = b"0123456789abcdef0123456789abcdef";
    let whsec = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    for (path, secret) in [("whsec", whsec.as_str()), ("plain", "plain-secret")] {
        let mut body = norn_body(DEVICE, &format!("{}/{path}", receiver.url));
        body["destination"]["http"]["secret"] = json!(secret);
        assert_eq!(app.create_norn(ALICE, body).await.0, 201);
    }
    app.publish(&event(DEVICE, "device-status/online", "{}"))
        .await;
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    for received in got {
        let (secret, hmac_key): (&str, Vec<u8>) = if received.path == "/whsec" {
            (&whsec, key.to_vec())
        } else {
            ("plain-secret", b"plain-secret".to_vec())
        };
        // X-Webpa-Signature: HMAC-SHA1 of the body with the secret as given.
        let mut sha1 = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
        sha1.update(&received.body);
        let expected: String = sha1
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            received.headers["x-webpa-signature"],
            format!("sha1={expected}")
        );
        // Standard Webhooks, verified independently: HMAC-SHA256 over id.timestamp.body.
        let id = received.headers["webhook-id"].to_str().unwrap();
        let timestamp = received.headers["webhook-timestamp"].to_str().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(timestamp.parse().unwrap()) < 60);
        let mut sha256 = Hmac::<sha2::Sha256>::new_from_slice(&hmac_key).unwrap();
        sha256.update(format!("{id}.{timestamp}.").as_bytes());
        sha256.update(&received.body);
        let expected =
            base64::engine::general_purpose::STANDARD.encode(sha256.finalize().into_bytes());
        assert_eq!(
            received.headers["webhook-signature"],
            format!("v1,{expected}")
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn retryable_failures_are_retried_and_retry_after_honoured() {
    let app = spawn_app(test_config()).await;
    let receiver = Receiver::start().await;
    app.create_norn(ALICE, norn_body(DEVICE, &format!("{}/flaky", receiver.url)))
        .await;
    receiver.script([
        Reply::Status(503),
        Reply::Status(500),
        Reply::RetryAfter(429, 1),
    ]);
    app.publish(&event(DEVICE, "device-status/online", r#"{"n":1}"#))
        .await;
    let got = receiver.wait_for(4, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 4, "three failures, then success");
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "the same event each time"
    );
    let waited = got[3].at - got[2].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 honoured, waited {waited:?}"
    );
    // A 408 is retried too; a 400 is not.
    receiver.script([Reply::Status(408), Reply::Status(400)]);
    app.publish(&event(DEVICE, "device-status/online", r#"{"n":2}"#))
        .await;
    receiver.wait_for(6, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 6, "no retry after 400");
    let metrics = app.metrics().await;
    assert!(metric(&metrics, "brunnr_deliveries_total", "outcome=\"retry\"") >= 4.0);
    assert!(metric(&metrics, "brunnr_deliveries_total", "outcome=\"failure\"") >= 1.0);
    app.stop().await;
}

#[tokio::test]
async fn gives_up_after_the_configured_retries() {
    let mut config = test_config();
    config.delivery.retries = 2;
    let app = spawn_app(config).await;
    let receiver = Receiver::start().await;
    app.create_norn(ALICE, norn_body(DEVICE, &format!("{}/down", receiver.url)))
        .await;
    receiver.script(std::iter::repeat_n(Reply::Status(502), 10));
    app.publish(&event(DEVICE, "device-status/online", "{}"))
        .await;
    receiver.wait_for(3, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.received().len(), 3, "one try and two retries");
    app.stop().await;
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let app = spawn_app(test_config()).await;
    let receiver = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    app.create_norn(ALICE, norn_body(DEVICE, &format!("{}/moved", receiver.url)))
        .await;
    receiver.script([Reply::Redirect(format!("{}/target", elsewhere.url))]);
    app.publish(&event(DEVICE, "device-status/online", "{}"))
        .await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        elsewhere.received().is_empty(),
        "the redirect was not followed"
    );
    assert_eq!(receiver.received().len(), 1, "a redirect is not retried");
    app.stop().await;
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let mut config = test_config();
    config.delivery.allow_private_destinations = false;
    let app = spawn_app(config).await;
    let receiver = Receiver::start().await;
    let port = receiver.url.rsplit(':').next().unwrap().to_owned();
    // Literal refused addresses: 400 at creation.
    for url in [
        format!("http://127.0.0.1:{port}/x"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://[::1]/x".to_owned(),
        "http://[::ffff:10.0.0.1]/x".to_owned(),
        "http://10.1.2.3/x".to_owned(),
    ] {
        let (status, answer) = app.create_norn(ALICE, norn_body(DEVICE, &url)).await;
        assert_eq!(status, 400, "{url}: {answer}");
        assert_eq!(answer["error"], "invalid_destination");
    }
    // A name is accepted, and refused at connect time once it resolves to loopback.
    let (status, _) = app
        .create_norn(
            ALICE,
            norn_body(DEVICE, &format!("http://localhost:{port}/named")),
        )
        .await;
    assert_eq!(status, 201);
    let before = metric(
        &app.metrics().await,
        "brunnr_deliveries_total",
        "outcome=\"failure\"",
    );
    app.publish(&event(DEVICE, "device-status/online", "{}"))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &app.metrics().await,
        "brunnr_deliveries_total",
        "outcome=\"failure\"",
    ) <= before
    {
        assert!(Instant::now() < deadline, "the delivery was not refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        receiver.received().is_empty(),
        "nothing reached the loopback receiver"
    );
    app.stop().await;

    // Allowed by a listed range.
    let mut config = test_config();
    config.delivery.allow_private_destinations = false;
    config.delivery.allow_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    let app = spawn_app(config).await;
    let (status, _) = app
        .create_norn(
            ALICE,
            norn_body(DEVICE, &format!("http://127.0.0.1:{port}/allowed")),
        )
        .await;
    assert_eq!(status, 201);
    app.publish(&event(DEVICE, "device-status/online", "{}"))
        .await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_full_queue_drops_cuts_off_and_notifies_once() {
    let mut config = test_config();
    config.delivery.queue_size = 2;
    config.delivery.cut_off_period = Duration::from_secs(1);
    let app = spawn_app(config).await;
    let stuck = Receiver::start().await;
    let failures = Receiver::start().await;
    let mut body = norn_body(DEVICE, &format!("{}/stuck", stuck.url));
    body["destination"]["http"]["failureURL"] = json!(format!("{}/failure", failures.url));
    body["destination"]["http"]["secret"] = json!("notice-secret");
    let (_, norn) = app.create_norn(ALICE, body).await;
    stuck.hang_all(true);
    for n in 0..10 {
        assert_eq!(
            app.publish(&event(
                DEVICE,
                "device-status/online",
                &format!("{{\"n\":{n}}}")
            ))
            .await
            .status(),
            202
        );
    }
    // One notice for the whole cut-off, however many events were dropped.
    let notices = failures.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(failures.received().len(), 1);
    let notice: serde_json::Value = serde_json::from_slice(&notices[0].body).unwrap();
    assert_eq!(notice["norn"]["id"], norn["id"]);
    assert_eq!(notice["norn"]["destination"]["http"]["secret"], "****");
    assert_eq!(notice["queue_size"], 2);
    assert_eq!(notice["cut_off_period"], "1s");
    assert!(notice["dropped"].as_u64().unwrap() >= 1);
    assert!(notice["text"].as_str().unwrap().contains("dropped"));
    assert!(
        notices[0].headers["x-webpa-signature"]
            .to_str()
            .unwrap()
            .starts_with("sha1=")
    );
    let metrics = app.metrics().await;
    assert!(metric(&metrics, "brunnr_dropped_total", "reason=\"queue_full\"") >= 1.0);
    assert!(metric(&metrics, "brunnr_dropped_total", "reason=\"cut_off\"") >= 1.0);

    // After the cut-off the norn receives again; what was queued before it was discarded.
    stuck.hang_all(false);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = stuck.received().len();
    assert!(
        before <= 2,
        "at most the event in flight and one more: {before}"
    );
    app.publish(&event(DEVICE, "device-status/online", r#"{"n":"after"}"#))
        .await;
    let got = stuck.wait_for(before + 1, Duration::from_secs(5)).await;
    let last = brunnr::wrp::WrpMessage::from_msgpack(&got.last().unwrap().body).unwrap();
    assert_eq!(last.payload.as_deref(), Some(&br#"{"n":"after"}"#[..]));
    app.stop().await;
}

#[tokio::test]
async fn a_hung_destination_does_not_slow_a_healthy_norn() {
    let mut config = test_config();
    config.delivery.timeout = Duration::from_secs(30);
    let app = spawn_app(config).await;
    let hung = Receiver::start().await;
    let healthy = Receiver::start().await;
    hung.hang_all(true);
    app.create_norn(ALICE, norn_body(DEVICE, &format!("{}/hung", hung.url)))
        .await;
    app.create_norn(BOB, norn_body(DEVICE, &format!("{}/healthy", healthy.url)))
        .await;
    let started = Instant::now();
    for n in 0..50 {
        app.publish(&event(
            DEVICE,
            "device-status/online",
            &format!("{{\"n\":{n}}}"),
        ))
        .await;
    }
    let got = healthy.wait_for(50, Duration::from_secs(10)).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    // In order, per norn.
    let order: Vec<serde_json::Value> = got
        .iter()
        .map(|r| {
            serde_json::from_slice(
                brunnr::wrp::WrpMessage::from_msgpack(&r.body)
                    .unwrap()
                    .payload
                    .as_deref()
                    .unwrap(),
            )
            .unwrap()
        })
        .collect();
    for (n, value) in order.iter().enumerate() {
        assert_eq!(value["n"], n);
    }
    assert_eq!(hung.received().len(), 1, "the hung norn holds one request");
    hung.hang_all(false);
    app.stop().await;
}

#[tokio::test]
async fn filters_select_events() {
    let app = spawn_app(test_config()).await;
    let receiver = Receiver::start().await;
    let mut body = norn_body(DEVICE, &format!("{}/hot", receiver.url));
    body["filter"] = json!("event.kind == 'device-status/online' && event.payload.temp > 30");
    let (status, norn) = app.create_norn(ALICE, body).await;
    assert_eq!(status, 201, "{norn}");
    assert_eq!(
        norn["filter"],
        "event.kind == 'device-status/online' && event.payload.temp > 30"
    );
    app.publish(&event(
        DEVICE,
        "device-status/mac:112233445566/online",
        r#"{"temp":10}"#,
    ))
    .await;
    app.publish(&event(
        DEVICE,
        "device-status/mac:112233445566/offline",
        r#"{"temp":50}"#,
    ))
    .await;
    app.publish(&event(
        DEVICE,
        "device-status/mac:112233445566/online",
        r#"{"note":"no temp"}"#,
    ))
    .await;
    app.publish(&event(
        DEVICE,
        "device-status/mac:112233445566/online",
        r#"{"temp":40}"#,
    ))
    .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);
    let message = brunnr::wrp::WrpMessage::from_msgpack(&got[0].body).unwrap();
    assert_eq!(message.payload.as_deref(), Some(&br#"{"temp":40}"#[..]));
    app.stop().await;
}

#[tokio::test]
async fn shutdown_delivers_what_is_queued() {
    let app = spawn_app(test_config()).await;
    let receiver = Receiver::start().await;
    app.create_norn(ALICE, norn_body(DEVICE, &format!("{}/slow", receiver.url)))
        .await;
    receiver.script([Reply::Status(503), Reply::Status(503)]);
    for n in 0..20 {
        app.publish(&event(
            DEVICE,
            "device-status/online",
            &format!("{{\"n\":{n}}}"),
        ))
        .await;
    }
    app.stop().await;
    // Two failed attempts, then all twenty delivered before `run` returned.
    assert_eq!(receiver.received().len(), 22);
}

#[tokio::test]
async fn connection_errors_are_retried() {
    let mut config = test_config();
    config.delivery.retries = 6;
    let app = spawn_app(config).await;
    // A port with nothing listening yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    app.create_norn(
        ALICE,
        norn_body(DEVICE, &format!("http://127.0.0.1:{port}/late")),
    )
    .await;
    app.publish(&event(DEVICE, "device-status/online", "{}"))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let receiver = Receiver::start_on(port).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let metrics = app.metrics().await;
    assert!(metric(&metrics, "brunnr_deliveries_total", "outcome=\"retry\"") >= 1.0);
    app.stop().await;
}

#[tokio::test]
async fn max_in_flight_allows_concurrent_deliveries() {
    for (in_flight, expected) in [(1, 1), (4, 4)] {
        let mut config = test_config();
        config.delivery.max_in_flight = in_flight;
        let app = spawn_app(config).await;
        let receiver = Receiver::start().await;
        receiver.hang_all(true);
        app.create_norn(
            ALICE,
            norn_body(DEVICE, &format!("{}/parallel", receiver.url)),
        )
        .await;
        for n in 0..4 {
            app.publish(&event(
                DEVICE,
                "device-status/online",
                &format!("{{\"n\":{n}}}"),
            ))
            .await;
        }
        receiver.wait_for(expected, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            receiver.received().len(),
            expected,
            "max_in_flight {in_flight}"
        );
        receiver.hang_all(false);
        receiver.wait_for(4, Duration::from_secs(5)).await;
        app.stop().await;
    }
}
