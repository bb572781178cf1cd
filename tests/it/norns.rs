//! The norn API: ownership, upsert, validation, expiry, persistence.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn ownership_is_private_across_principals() {
    let app = spawn_app(test_config()).await;
    let receiver = Receiver::start().await;
    let url = format!("{}/a", receiver.url);
    let (status, alice_norn) = app
        .create_norn(ALICE, norn_body("MAC:11:22:33:44:55:66/parodus", &url))
        .await;
    assert_eq!(status, 201, "{alice_norn}");
    assert_eq!(alice_norn["deviceID"], "mac:112233445566");
    assert_eq!(alice_norn["owner"], "alice");
    let id = alice_norn["id"].as_str().unwrap();

    // Bob sees nothing of Alice's norn and cannot change it.
    let get = |token: &'static str, id: String| {
        let (client, url) = (app.client.clone(), format!("{}/norns/{id}", app.url));
        async move { client.get(url).bearer_auth(token).send().await.unwrap() }
    };
    assert_eq!(get(BOB, id.into()).await.status(), 404);
    let bob_list = app.list_norns(BOB).await;
    assert!(bob_list.is_empty());
    let delete = app
        .client
        .delete(format!("{}/norns/{id}", app.url))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 404);
    let put = app
        .client
        .put(format!("{}/norns/{id}", app.url))
        .bearer_auth(BOB)
        .json(&norn_body("mac:112233445566", &url))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 404);
    // The same (device, destination) pair belongs to Alice: 409 for Bob.
    let (status, conflict) = app
        .create_norn(BOB, norn_body("mac:112233445566", &url))
        .await;
    assert_eq!(status, 409);
    assert_eq!(conflict["error"], "conflict");

    // Alice posting the same pair again updates it: 200, same id.
    let mut again = norn_body("mac:112233445566", &url);
    again["duration"] = json!("30m");
    let (status, updated) = app.create_norn(ALICE, again).await;
    assert_eq!(status, 200);
    assert_eq!(updated["id"], alice_norn["id"]);
    assert_eq!(updated["duration"], "30m");

    // The admin sees every norn.
    assert_eq!(get(ADMIN, id.into()).await.status(), 200);
    let all = app.list_norns(ADMIN).await;
    assert_eq!(all.len(), 1);

    // Alice's list, get, put and delete.
    let list = app.list_norns(ALICE).await;
    assert_eq!(list.len(), 1);
    let mut body = get(ALICE, id.into())
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    body["destination"]["http"]["format"] = json!("payload");
    body.as_object_mut().unwrap().remove("expiresAt");
    body["duration"] = json!("5m");
    let put = app
        .client
        .put(format!("{}/norns/{id}", app.url))
        .bearer_auth(ALICE)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let put: serde_json::Value = put.json().await.unwrap();
    assert_eq!(put["destination"]["http"]["format"], "payload");
    let delete = app
        .client
        .delete(format!("{}/norns/{id}", app.url))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 204);
    assert_eq!(get(ALICE, id.into()).await.status(), 404);
    // An id of any shape is 404.
    assert_eq!(get(ALICE, "not-a-uuid".into()).await.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn credentials_and_roles_are_enforced() {
    let app = spawn_app(test_config()).await;
    let no_auth = app
        .client
        .get(format!("{}/norns", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(no_auth.status(), 401);
    let body: serde_json::Value = no_auth.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let wrong = app
        .client
        .get(format!("{}/norns", app.url))
        .bearer_auth("wrong-token-xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // X-Auth-Token works like Bearer.
    let header = app
        .client
        .get(format!("{}/norns", app.url))
        .header("x-auth-token", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(header.status(), 200);
    // Bob may read only mac:* keys, so he may not subscribe to others.
    let (status, answer) = app
        .create_norn(BOB, norn_body("uuid:3f2a", "https://example.com/hook"))
        .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"], "forbidden");
    // Roles and ids are checked before the body is read: 403 and 404, not 415.
    let publisher_post = app
        .client
        .post(format!("{}/norns", app.url))
        .bearer_auth(PUBLISHER)
        .header("content-type", "text/plain")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(publisher_post.status(), 403);
    let odd_id = app
        .client
        .put(format!("{}/norns/not-a-uuid", app.url))
        .bearer_auth(ALICE)
        .header("content-type", "text/plain")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(odd_id.status(), 404);
    // A publisher may not manage norns; a subscriber may not publish.
    let publisher = app
        .client
        .get(format!("{}/norns", app.url))
        .bearer_auth(PUBLISHER)
        .send()
        .await
        .unwrap();
    assert_eq!(publisher.status(), 403);
    let message = event("mac:112233445566", "device-status/online", "{}");
    let as_subscriber = app
        .client
        .post(format!("{}/events", app.url))
        .bearer_auth(ALICE)
        .header("content-type", "application/msgpack")
        .body(message.to_msgpack())
        .send()
        .await
        .unwrap();
    assert_eq!(as_subscriber.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn invalid_norns_get_clear_errors() {
    let app = spawn_app(test_config()).await;
    let cases = [
        (
            json!({"destination": {"http": {"url": "https://example.com/"}}, "duration": "1m"}),
            "invalid_norn",
            "deviceID",
        ),
        (
            json!({"deviceID": "mac:112233445566", "destination": {"http": {"url": "https://example.com/"}}, "duration": "2h"}),
            "invalid_duration",
            "1h",
        ),
        (
            json!({"deviceID": "mac:112233445566", "destination": {"http": {"url": "https://example.com/"}}, "expiresAt": "2001-01-01T00:00:00Z"}),
            "invalid_duration",
            "past",
        ),
        (
            json!({"deviceID": "mac:112233445566", "destination": {"http": {"url": "https://example.com/"}}, "expiresAt": "next week"}),
            "invalid_duration",
            "RFC 3339",
        ),
        (
            json!({"deviceID": "mac:112233445566", "destination": {"http": {"url": "https://example.com/"}}}),
            "invalid_duration",
            "required",
        ),
        (
            json!({"deviceID": "mac:112233445566", "destination": {"http": {"url": "ftp://example.com/"}}, "duration": "1m"}),
            "invalid_destination",
            "http or https",
        ),
        (
            json!({"deviceID": "mac:112233445566", "destination": {"http": {"url": "::nonsense"}}, "duration": "1m"}),
            "invalid_destination",
            "not a URL",
        ),
        (
            json!({"deviceID": "mac:112233445566", "destination": {}, "duration": "1m"}),
            "invalid_destination",
            "exactly one",
        ),
        (
            json!({"deviceID": "mac:112233445566", "destination": {"http": {"url": "https://example.com/"}}, "duration": "1m", "filter": "event.kind =="}),
            "invalid_filter",
            "CEL",
        ),
        (
            json!({"deviceID": "mac:112233445566", "destination": {"http": {"url": "https://example.com/", "format": "xml"}}, "duration": "1m"}),
            "invalid_json",
            "destination.http.format",
        ),
        (
            json!({"deviceID": "mac:112233445566", "destination": {"http": {"url": "https://example.com/"}}, "duration": "1m", "colour": "red"}),
            "invalid_json",
            "colour",
        ),
    ];
    for (body, code, detail) in cases {
        let (status, answer) = app.create_norn(ALICE, body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"], code, "{body} → {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(detail),
            "{body} → {answer}"
        );
    }
    let not_json = app
        .client
        .post(format!("{}/norns", app.url))
        .bearer_auth(ALICE)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);
    let broken = app
        .client
        .post(format!("{}/norns", app.url))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .body("{\"deviceID\":")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), 400);
    let list = app.list_norns(ALICE).await;
    assert!(list.is_empty(), "no invalid norn was stored");
    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            "brunnr_api_errors_total",
            "error=\"invalid_filter\""
        ) >= 1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn legacy_mimisbrunnr_bodies_are_accepted() {
    let app = spawn_app(test_config()).await;
    let receiver = Receiver::start().await;
    let (status, norn) = app
        .create_norn(ALICE, json!({
            "DeviceID": "mac:aabbccddeeff",
            "TTL": 300,
            "Destination": {"HttpConfig": {"URL": format!("{}/legacy", receiver.url), "Secret": "legacy-secret", "FailureURL": format!("{}/fail", receiver.url)}}
        }))
        .await;
    assert_eq!(status, 201, "{norn}");
    assert_eq!(norn["deviceID"], "mac:aabbccddeeff");
    assert_eq!(norn["duration"], "5m");
    assert_eq!(norn["destination"]["http"]["secret"], "****");
    assert_eq!(norn["destination"]["http"]["format"], "wrp");
    assert!(
        norn["destination"]["http"]["failureURL"]
            .as_str()
            .unwrap()
            .ends_with("/fail")
    );
    app.stop().await;
}

#[tokio::test]
async fn expired_norns_stop_at_once_and_are_removed() {
    let app = spawn_app(test_config()).await;
    let receiver = Receiver::start().await;
    let mut body = norn_body("mac:112233445566", &format!("{}/short", receiver.url));
    body["duration"] = json!("1s");
    let (status, norn) = app.create_norn(ALICE, body).await;
    assert_eq!(status, 201);
    app.publish(&event("mac:112233445566", "device-status/online", "{}"))
        .await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.publish(&event("mac:112233445566", "device-status/offline", "{}"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1, "nothing after expiry");
    let get = app
        .client
        .get(format!(
            "{}/norns/{}",
            app.url,
            norn["id"].as_str().unwrap()
        ))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 404);
    // Removed from the store too: a restart does not bring it back.
    let config = test_config();
    let data_dir = app.data_dir.clone();
    app.stop().await;
    let mut config = config;
    config.store.path = data_dir;
    let app = spawn_app(config).await;
    let all = app.list_norns(ADMIN).await;
    assert!(all.is_empty(), "{all:?}");
    app.stop().await;
}

#[tokio::test]
async fn norns_survive_a_graceful_restart() {
    let app = spawn_app(test_config()).await;
    let receiver = Receiver::start().await;
    let (status, norn) = app
        .create_norn(
            ALICE,
            norn_body("mac:112233445566", &format!("{}/kept", receiver.url)),
        )
        .await;
    assert_eq!(status, 201);
    let data_dir = app.data_dir.clone();
    app.stop().await;

    let mut config = test_config();
    config.store.path = data_dir;
    let app = spawn_app(config).await;
    let got: serde_json::Value = app
        .client
        .get(format!(
            "{}/norns/{}",
            app.url,
            norn["id"].as_str().unwrap()
        ))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, norn);
    app.publish(&event("mac:112233445566", "device-status/online", "{}"))
        .await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    app.stop().await;
}
