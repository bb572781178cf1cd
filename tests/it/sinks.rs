//! SQS and NATS destinations against real servers: moto's SQS-compatible server and nats-server.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use futures::StreamExt;
use serde_json::json;

use crate::helpers::*;
use crate::servers;

const DEVICE: &str = "mac:112233445566";

/// Metrics are process-wide and the SQS tests compare `sink="sqs"` counters before and after:
/// they run one at a time.
static SQS_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

async fn create_queue(client: &aws_sdk_sqs::Client, name: &str, max_size: Option<u32>) -> String {
    let mut request = client.create_queue().queue_name(name);
    if let Some(size) = max_size {
        request = request.attributes(QueueAttributeName::MaximumMessageSize, size.to_string());
    }
    request
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned()
}

/// Receives (and deletes) messages until `n` arrived or `timeout` passed.
async fn receive(
    client: &aws_sdk_sqs::Client,
    queue: &str,
    n: usize,
    timeout: Duration,
) -> Vec<aws_sdk_sqs::types::Message> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        let output = client
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for message in output.messages() {
            client
                .delete_message()
                .queue_url(queue)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
            got.push(message.clone());
        }
    }
    got
}

fn sqs_norn(queue: &str, endpoint: &str) -> serde_json::Value {
    json!({"deviceID": DEVICE, "duration": "10m", "destination": {"sqs": {
        "queueURL": queue, "region": "us-east-1", "accessKeyID": "test", "secretAccessKey": "test-secret",
        "endpointURL": endpoint}}})
}

#[tokio::test]
async fn sqs_messages_carry_the_wrp_message_and_attributes() {
    let _serial = SQS_TESTS.lock().await;
    let moto = servers::moto();
    let endpoint = moto.url("http");
    let client = sqs_client(&endpoint).await;
    let queue = create_queue(&client, "events", None).await;
    let app = spawn_app(test_config()).await;
    let (status, norn) = app.create_norn(ALICE, sqs_norn(&queue, &endpoint)).await;
    assert_eq!(status, 201, "{norn}");
    assert_eq!(norn["destination"]["sqs"]["secretAccessKey"], "****");
    assert_eq!(norn["destination"]["sqs"]["accessKeyID"], "test");
    let sent = event(
        DEVICE,
        "device-status/mac:112233445566/online",
        r#"{"n":1}"#,
    );
    let accepted: serde_json::Value = app.publish(&sent).await.json().await.unwrap();
    let got = receive(&client, &queue, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let body: serde_json::Value = serde_json::from_str(got[0].body().unwrap()).unwrap();
    assert_eq!(body["msg_type"], 4);
    assert_eq!(body["source"], DEVICE);
    assert_eq!(
        body["transaction_uuid"],
        sent.transaction_uuid.clone().unwrap()
    );
    assert_eq!(body["payload"], "eyJuIjoxfQ==");
    let attributes = got[0].message_attributes().unwrap();
    let text = |name: &str| attributes[name].string_value().unwrap().to_owned();
    assert_eq!(text("deviceID"), DEVICE);
    assert_eq!(text("eventKind"), "device-status/online");
    assert_eq!(text("eventID"), accepted["id"].as_str().unwrap());
    assert_eq!(text("source"), "wrp");
    app.stop().await;
}

#[tokio::test]
async fn sqs_batches_what_queued_while_the_server_was_down() {
    let _serial = SQS_TESTS.lock().await;
    let mut moto = servers::moto();
    let endpoint = moto.url("http");
    let client = sqs_client(&endpoint).await;
    let queue = create_queue(&client, "batched", None).await;
    let mut config = test_config();
    config.delivery.backoff = Duration::from_secs(6);
    config.delivery.max_backoff = Duration::from_secs(6);
    let app = spawn_app(config).await;
    app.create_norn(ALICE, sqs_norn(&queue, &endpoint)).await;
    let calls = |text: &str| {
        metric(
            text,
            "brunnr_sink_calls_total",
            "sink=\"sqs\",outcome=\"ok\"",
        )
    };
    let before = calls(&app.metrics().await);

    // Down: the first event's attempt fails and waits 3 to 6 s; 24 more queue behind it.
    moto.stop();
    for n in 0..25 {
        app.publish(&event(
            DEVICE,
            "device-status/online",
            &format!("{{\"n\":{n}}}"),
        ))
        .await;
    }
    moto.restart();
    let queue = create_queue(&client, "batched", None).await;
    let got = receive(&client, &queue, 25, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 25);
    // The retried first event, then the 24 behind it in batches of at most 10: 4 calls that went
    // through (the failed ones, while the server was down, are not counted here).
    let made = calls(&app.metrics().await) - before;
    assert!(
        made <= 4.0,
        "{made} successful SendMessageBatch calls for 25 events"
    );
    let mut order: Vec<u64> = got
        .iter()
        .map(|m| {
            let body: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
            let payload = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                body["payload"].as_str().unwrap(),
            )
            .unwrap();
            serde_json::from_slice::<serde_json::Value>(&payload).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    order.sort();
    assert_eq!(order, (0..25).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test]
async fn sqs_down_drops_are_counted_and_the_norn_recovers() {
    let _serial = SQS_TESTS.lock().await;
    let mut moto = servers::moto();
    let endpoint = moto.url("http");
    let client = sqs_client(&endpoint).await;
    let queue = create_queue(&client, "flaky", None).await;
    let mut config = test_config();
    config.delivery.queue_size = 3;
    config.delivery.retries = 1;
    config.delivery.backoff = Duration::from_millis(500);
    config.delivery.cut_off_period = Duration::from_millis(500);
    let app = spawn_app(config).await;
    app.create_norn(ALICE, sqs_norn(&queue, &endpoint)).await;
    let dropped = |text: &str| metric(text, "brunnr_dropped_total", "sink=\"sqs\"");
    let before = dropped(&app.metrics().await);
    moto.stop();
    for n in 0..20 {
        app.publish(&event(
            DEVICE,
            "device-status/online",
            &format!("{{\"n\":{n}}}"),
        ))
        .await;
    }
    let after = dropped(&app.metrics().await);
    assert!(after - before >= 10.0, "drops counted: {}", after - before);
    moto.restart();
    let queue = create_queue(&client, "flaky", None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    receive(&client, &queue, 10, Duration::from_secs(1)).await; // whatever survived
    app.publish(&event(DEVICE, "device-status/online", r#"{"n":"back"}"#))
        .await;
    let got = receive(&client, &queue, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the norn delivers again");
    assert!(got[0].body().unwrap().contains("eyJuIjoiYmFjayJ9"));
    app.stop().await;
}

#[tokio::test]
async fn sqs_failures_that_are_the_senders_are_counted_not_retried() {
    let _serial = SQS_TESTS.lock().await;
    let moto = servers::moto();
    let endpoint = moto.url("http");
    let client = sqs_client(&endpoint).await;
    let roomy = create_queue(&client, "roomy", None).await;
    let small = create_queue(&client, "small", Some(1024)).await;
    let mut config = test_config();
    config.sinks.sqs.max_batch_bytes = 2048;
    let app = spawn_app(config).await;
    let retries = |text: &str| {
        metric(
            text,
            "brunnr_deliveries_total",
            "sink=\"sqs\",outcome=\"retry\"",
        )
    };
    let failures = |text: &str| {
        metric(
            text,
            "brunnr_deliveries_total",
            "sink=\"sqs\",outcome=\"failure\"",
        )
    };
    let metrics = app.metrics().await;
    let (retries_before, failures_before) = (retries(&metrics), failures(&metrics));

    // Over brunnr's limit: refused entry by entry, the others of the batch delivered.
    app.create_norn(ALICE, sqs_norn(&roomy, &endpoint)).await;
    let big = "x".repeat(3000);
    app.publish(&event(DEVICE, "device-status/online", r#"{"n":"small-1"}"#))
        .await;
    app.publish(&event(
        DEVICE,
        "device-status/online",
        &format!("{{\"big\":\"{big}\"}}"),
    ))
    .await;
    app.publish(&event(DEVICE, "device-status/online", r#"{"n":"small-2"}"#))
        .await;
    let got = receive(&client, &roomy, 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    // Over the queue's own limit: SQS answers 400, the sender's fault.
    let medium = "y".repeat(1200);
    app.create_norn(ALICE, json!({"deviceID": "mac:665544332211", "duration": "10m", "destination": {"sqs": {
        "queueURL": small, "region": "us-east-1", "accessKeyID": "test", "secretAccessKey": "test-secret", "endpointURL": endpoint}}})).await;
    app.publish(&event(
        "mac:665544332211",
        "device-status/online",
        &format!("{{\"m\":\"{medium}\"}}"),
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while failures(&app.metrics().await) - failures_before < 2.0 {
        assert!(Instant::now() < deadline, "both failures counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        retries(&app.metrics().await),
        retries_before,
        "nothing was retried"
    );
    app.stop().await;
}

/// Publishes events marked `mark` once every 500 ms until one arrives (at most 20 s).
async fn publish_until_received(app: &TestApp, messages: &mut async_nats::Subscriber, mark: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        assert!(Instant::now() < deadline, "no {mark} event arrived");
        let payload = format!("{{\"{mark}\":{n}}}");
        app.publish(&event(DEVICE, "device-status/online", &payload))
            .await;
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(500), messages.next()).await
            && String::from_utf8_lossy(&message.payload).contains(mark)
        {
            return;
        }
    }
}

/// Waits until brunnr's NATS sink connection is up (it connects in the background).
async fn wait_nats_connected(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = app.readyz().await;
        if body["nats_sink"] == "connected" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the NATS sink did not connect: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nats_norns_publish_json_and_kaa_aip() {
    let nats = servers::nats();
    let mut config = test_config();
    config.sinks.nats.url = Some(nats.url("nats"));
    let app = spawn_app(config).await;
    wait_nats_connected(&app).await;
    let subscriber = async_nats::connect(nats.url("nats")).await.unwrap();
    let mut json_messages = subscriber.subscribe("brunnr.test.json").await.unwrap();
    let mut aip_messages = subscriber.subscribe("brunnr.test.aip").await.unwrap();
    subscriber.flush().await.unwrap();
    for (subject, format) in [("brunnr.test.json", "json"), ("brunnr.test.aip", "kaa-aip")] {
        let (status, norn) = app
            .create_norn(ALICE, json!({"deviceID": DEVICE, "duration": "10m", "destination": {"nats": {"subject": subject, "format": format}}}))
            .await;
        assert_eq!(status, 201, "{norn}");
    }
    let (status, bad) = app
        .create_norn(ALICE, json!({"deviceID": DEVICE, "duration": "10m", "destination": {"nats": {"subject": "brunnr.>"}}}))
        .await;
    assert_eq!(status, 400, "{bad}");
    let accepted: serde_json::Value = app
        .publish(&event(
            DEVICE,
            "device-status/mac:112233445566/online",
            r#"{"temp":21}"#,
        ))
        .await
        .json()
        .await
        .unwrap();

    let message = tokio::time::timeout(Duration::from_secs(5), json_messages.next())
        .await
        .unwrap()
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(envelope["id"], accepted["id"]);
    assert_eq!(envelope["key"], DEVICE);
    assert_eq!(envelope["kind"], "device-status/online");
    assert_eq!(envelope["source"], "wrp");
    assert_eq!(envelope["payload"]["temp"], 21);

    // Decoded with the vendored schema, read here on its own.
    let schema = apache_avro::Schema::parse_str(include_str!(
        "../../docs/kaa/0023-automation-invocation.avsc"
    ))
    .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), aip_messages.next())
        .await
        .unwrap()
        .unwrap();
    let record = apache_avro::from_avro_datum(&schema, &mut &message.payload[..], None).unwrap();
    let apache_avro::types::Value::Record(fields) = record else {
        panic!("a record")
    };
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(
        field("correlationId"),
        apache_avro::types::Value::String(accepted["id"].as_str().unwrap().into())
    );
    assert_eq!(
        field("tenantId"),
        apache_avro::types::Value::String(DEVICE.into())
    );
    let apache_avro::types::Value::Long(timestamp) = field("timestamp") else {
        panic!("a long")
    };
    assert!((brunnr::event::now_ms() - timestamp).abs() < 10_000);
    let apache_avro::types::Value::Union(1, payload) = field("payload") else {
        panic!("payload bytes")
    };
    let apache_avro::types::Value::Bytes(payload) = *payload else {
        panic!("bytes")
    };
    let inner: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(inner["id"], accepted["id"]);
    app.stop().await;
}

#[tokio::test]
async fn nats_sink_reconnects_after_a_restart() {
    let mut nats = servers::nats();
    let mut config = test_config();
    config.sinks.nats.url = Some(nats.url("nats"));
    let app = spawn_app(config).await;
    app.create_norn(ALICE, json!({"deviceID": DEVICE, "duration": "10m", "destination": {"nats": {"subject": "brunnr.restart"}}})).await;
    wait_nats_connected(&app).await;
    let subscriber = async_nats::connect(nats.url("nats")).await.unwrap();
    let mut messages = subscriber.subscribe("brunnr.restart").await.unwrap();
    subscriber.flush().await.unwrap();
    // Publish until one arrives. (In about one run of five, the first message after the
    // subscription did not reach this subscriber although brunnr's flush was confirmed by the
    // server; see the closing note of issue 3.)
    publish_until_received(&app, &mut messages, "before").await;

    nats.restart();
    // Both clients reconnect by themselves; events published after that arrive.
    publish_until_received(&app, &mut messages, "after").await;
    assert_eq!(app.readyz().await["nats_sink"], "connected");
    app.stop().await;
}
