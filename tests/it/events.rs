//! `POST /events`: WRP in both encodings, Caduceus signatures, and a table of bad inputs.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn wrp_msgpack_and_json_are_routed_by_device() {
    let app = spawn_app(test_config()).await;
    let receiver = Receiver::start().await;
    let other = Receiver::start().await;
    app.create_norn(
        ALICE,
        norn_body("mac:112233445566", &format!("{}/mine", receiver.url)),
    )
    .await;
    app.create_norn(
        ALICE,
        norn_body("mac:665544332211", &format!("{}/other", other.url)),
    )
    .await;

    let packed = event(
        "MAC:11:22:33:44:55:66/parodus",
        "device-status/mac:112233445566/online",
        r#"{"n":1}"#,
    );
    let response = app.publish(&packed).await;
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    assert_eq!(accepted["deviceID"], "mac:112233445566");
    assert!(uuid::Uuid::parse_str(accepted["id"].as_str().unwrap()).is_ok());

    // WRP JSON, keyed from dest because the source is not a device.
    let json_event = json!({
        "msg_type": 4, "source": "self:/talaria", "dest": "event:device-status/mac:112233445566/offline",
        "transaction_uuid": "tx-2", "content_type": "application/json", "payload": "eyJuIjoyfQ=="
    });
    let response = app
        .client
        .post(format!("{}/events", app.url))
        .bearer_auth(PUBLISHER)
        .json(&json_event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    // Default format `wrp`: msgpack of the whole message, as it came.
    assert_eq!(got[0].headers["content-type"], "application/msgpack");
    let first = brunnr::wrp::WrpMessage::from_msgpack(&got[0].body).unwrap();
    assert_eq!(first, packed);
    assert_eq!(got[0].headers["x-webpa-device-id"], "mac:112233445566");
    assert_eq!(got[0].headers["x-webpa-event"], "device-status");
    assert_eq!(
        got[0].headers["x-webpa-transaction-id"],
        packed.transaction_uuid.as_deref().unwrap()
    );
    assert_eq!(got[0].headers["x-xmidt-message-type"], "SimpleEvent");
    let second = brunnr::wrp::WrpMessage::from_msgpack(&got[1].body).unwrap();
    assert_eq!(second.transaction_uuid.as_deref(), Some("tx-2"));
    assert_eq!(second.payload.as_deref(), Some(&b"{\"n\":2}"[..]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        other.received().is_empty(),
        "another device's norn got nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn delivery_formats_json_and_payload() {
    let app = spawn_app(test_config()).await;
    let receiver = Receiver::start().await;
    for format in ["json", "payload"] {
        let mut body = norn_body("mac:112233445566", &format!("{}/{format}", receiver.url));
        body["destination"]["http"]["format"] = json!(format);
        assert_eq!(app.create_norn(ALICE, body).await.0, 201);
    }
    app.publish(&event(
        "mac:112233445566",
        "device-status/online",
        r#"{"temp":21}"#,
    ))
    .await;
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    let json = got.iter().find(|r| r.path == "/json").unwrap();
    assert_eq!(json.headers["content-type"], "application/json");
    let value: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(value["msg_type"], 4);
    assert_eq!(value["payload"], "eyJ0ZW1wIjoyMX0=");
    let payload = got.iter().find(|r| r.path == "/payload").unwrap();
    assert_eq!(payload.headers["content-type"], "application/json");
    assert_eq!(&payload.body[..], br#"{"temp":21}"#);
    app.stop().await;
}

fn hmac_hex<M: Mac + hmac::digest::KeyInit>(secret: &str, body: &[u8]) -> String {
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn caduceus_signatures_are_required_when_configured() {
    let mut config = test_config();
    config.sources.wrp.secret = Some("caduceus-secret".into());
    let app = spawn_app(config).await;
    let body = event("mac:112233445566", "device-status/online", "{}").to_msgpack();
    let post = |headers: Vec<(&'static str, String)>| {
        let mut request = app
            .client
            .post(format!("{}/events", app.url))
            .header("content-type", "application/msgpack")
            .body(body.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(vec![]).await, 403, "no signature");
    assert_eq!(
        post(vec![("x-webpa-signature", "sha1=00ff".into())]).await,
        403,
        "wrong signature"
    );
    assert_eq!(
        post(vec![(
            "x-webpa-signature",
            format!("sha1={}", hmac_hex::<Hmac<sha1::Sha1>>("other", &body))
        )])
        .await,
        403
    );
    assert_eq!(
        post(vec![(
            "x-webpa-signature",
            format!(
                "sha1={}",
                hmac_hex::<Hmac<sha1::Sha1>>("caduceus-secret", &body)
            )
        )])
        .await,
        202
    );
    assert_eq!(
        post(vec![(
            "xmidt-signature",
            format!(
                "sha256={}",
                hmac_hex::<Hmac<sha2::Sha256>>("caduceus-secret", &body)
            )
        )])
        .await,
        202
    );
    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            "brunnr_events_rejected_total",
            "reason=\"bad_signature\""
        ) >= 3.0
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_inputs_get_clear_errors_and_the_server_stays_healthy() {
    let mut config = test_config();
    config.sources.wrp.max_body = 4096;
    let app = spawn_app(config).await;
    let receiver = Receiver::start().await;
    app.create_norn(
        ALICE,
        norn_body("mac:112233445566", &format!("{}/ok", receiver.url)),
    )
    .await;
    let good = event("mac:112233445566", "device-status/online", "{}").to_msgpack();
    let mut wrong_type = event("mac:112233445566", "x", "{}");
    wrong_type.msg_type = 3;
    let mut no_device = event("self:/talaria", "device-status/nothing", "{}");
    no_device.dest = "event:node-change".into();
    let mut oversize = event("mac:112233445566", "x", "{}");
    oversize.payload = Some(vec![b'a'; 10_000].into());

    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "truncated msgpack",
            "application/msgpack",
            good[..good.len() / 2].to_vec(),
            400,
            "invalid_wrp",
        ),
        (
            "garbage msgpack",
            "application/msgpack",
            vec![0xc1, 0xff, 0x00],
            400,
            "invalid_wrp",
        ),
        (
            "wrong msg_type",
            "application/msgpack",
            wrong_type.to_msgpack(),
            400,
            "wrong_msg_type",
        ),
        (
            "no device id",
            "application/msgpack",
            no_device.to_msgpack(),
            400,
            "no_device_id",
        ),
        (
            "non-UTF-8 JSON",
            "application/json",
            b"{\"msg_type\":4,\"source\":\"mac:\xff\xfe\"}".to_vec(),
            400,
            "invalid_wrp",
        ),
        (
            "payload not base64",
            "application/json",
            br#"{"msg_type":4,"source":"mac:112233445566","payload":"***"}"#.to_vec(),
            400,
            "invalid_wrp",
        ),
        (
            "oversize",
            "application/msgpack",
            oversize.to_msgpack(),
            413,
            "too_large",
        ),
        (
            "unknown content type",
            "text/plain",
            good.clone(),
            415,
            "unsupported_media_type",
        ),
        (
            "empty body",
            "application/msgpack",
            vec![],
            400,
            "invalid_wrp",
        ),
    ];
    for (name, content_type, body, status, code) in cases {
        let response = app
            .client
            .post(format!("{}/events", app.url))
            .bearer_auth(PUBLISHER)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["error"], code, "{name}: {answer}");
        assert!(
            answer["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}: {answer}"
        );
        let health = app
            .client
            .get(format!("{}/healthz", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "healthy after {name}");
    }
    // Nothing bad reached the norn; a good event still does.
    assert_eq!(
        app.client
            .post(format!("{}/events", app.url))
            .bearer_auth(PUBLISHER)
            .header("content-type", "application/wrp")
            .body(good)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    receiver.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.received().len(), 1);
    let metrics = app.metrics().await;
    for reason in [
        "invalid_wrp",
        "wrong_msg_type",
        "no_device_id",
        "too_large",
        "unsupported_media_type",
    ] {
        assert!(
            metric(
                &metrics,
                "brunnr_events_rejected_total",
                &format!("reason=\"{reason}\"")
            ) >= 1.0,
            "{reason} counted"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn operations_endpoints() {
    let app = spawn_app(test_config()).await;
    let get = |path: &str| app.client.get(format!("{}{path}", app.url)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let openapi: serde_json::Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/norns",
        "/norns/{id}",
        "/events",
        "/healthz",
        "/readyz",
        "/metrics",
        "/push_events",
        "/drop_user",
        "/subscribe_to_events",
        "/v1/stream",
        "/clients",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} documented");
    }
    assert!(openapi["paths"]["/norns"]["post"]["responses"]["409"].is_object());
    // One path, two routes: WRP in (POST) and monit's SSE (GET).
    assert!(openapi["paths"]["/events"]["post"].is_object());
    assert!(openapi["paths"]["/events"]["get"].is_object());
    let missing = get("/nowhere").await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );
    app.publish(&event("mac:112233445566", "device-status/online", "{}"))
        .await;
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for name in [
        "brunnr_events_received_total",
        "brunnr_norns",
        "brunnr_events_unrouted_total",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
    assert!(
        !metrics.contains("mac:112233445566"),
        "no device id in labels"
    );
    app.stop().await;
}

/// Starts a `POST /events` whose body never finishes arriving (10 of 100 bytes sent).
async fn start_slow_event(app: &TestApp) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut slow = tokio::net::TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {PUBLISHER}\r\ncontent-type: application/msgpack\r\ncontent-length: 100\r\n\r\n"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&[0x80; 10]).await.unwrap();
    slow
}

#[tokio::test]
async fn too_many_events_in_flight_get_429() {
    let mut config = test_config();
    config.server.max_events_in_flight = 1;
    let app = spawn_app(config).await;
    // One event whose body is still arriving holds the only slot.
    let slow = start_slow_event(&app).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = app
        .publish(&event("mac:112233445566", "device-status/online", "{}"))
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "busy"
    );
    drop(slow);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = app
        .publish(&event("mac:112233445566", "device-status/online", "{}"))
        .await;
    assert_eq!(response.status(), 202, "the slot is free again");
    app.stop().await;
}

#[tokio::test]
async fn slow_bodies_time_out_and_credentials_come_first() {
    use tokio::io::AsyncReadExt;
    let mut config = test_config();
    config.server.body_timeout = Duration::from_millis(300);
    let app = spawn_app(config).await;
    let mut slow = start_slow_event(&app).await;
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    // No credentials: 401 before anything about the body is looked at.
    let response = app
        .client
        .post(format!("{}/events", app.url))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    app.stop().await;
}
