//! The binary itself: `config check`, refusing to run exposed without auth, SIGTERM, SIGKILL.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_brunnr");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &std::path::Path, port: u16) -> Child {
    Command::new(BIN)
        .arg("serve")
        .env("BRUNNR_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("BRUNNR_STORE__PATH", dir)
        .env("BRUNNR_DELIVERY__ALLOW_PRIVATE_DESTINATIONS", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(client: &reqwest::Client, port: u16) {
    for _ in 0..200 {
        if let Ok(response) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && response.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the brunnr process did not become ready");
}

#[test]
fn config_check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "delivery: {queue_size: 10, timeout: 5s}\n").unwrap();
    let output = Command::new(BIN)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(output.status.success());
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "delivery: {timeout: 5 parsecs}\n").unwrap();
    let output = Command::new(BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("delivery.timeout"), "{stderr}");
}

#[test]
fn refuses_to_listen_publicly_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .arg("serve")
        .env("BRUNNR_SERVER__LISTEN", "0.0.0.0:0")
        .env("BRUNNR_STORE__PATH", dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("auth.tokens"),
        "says how to configure auth: {stderr}"
    );
}

#[tokio::test]
async fn a_norn_survives_sigkill_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let receiver = Receiver::start().await;
    let port = free_port();
    let mut child = start(dir.path(), port);
    wait_ready(&client, port).await;
    let response = client
        .post(format!("http://127.0.0.1:{port}/norns"))
        .json(&norn_body(
            "mac:112233445566",
            &format!("{}/after-kill", receiver.url),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let norn: serde_json::Value = response.json().await.unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let port = free_port();
    let mut child = start(dir.path(), port);
    wait_ready(&client, port).await;
    let got: serde_json::Value = client
        .get(format!(
            "http://127.0.0.1:{port}/norns/{}",
            norn["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["id"], norn["id"]);
    let message = event("mac:112233445566", "device-status/online", "{}");
    let response = client
        .post(format!("http://127.0.0.1:{port}/events"))
        .header("content-type", "application/msgpack")
        .body(message.to_msgpack())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    receiver.wait_for(1, Duration::from_secs(5)).await;

    // SIGTERM: a clean exit, status 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn client_commands_manage_norns_and_publish() {
    let app = spawn_app(test_config()).await;
    let receiver = Receiver::start().await;
    let (url, hook) = (app.url.clone(), format!("{}/cli", receiver.url));
    let run = move |token: &'static str, args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(&args)
                .env("BRUNNR_URL", url)
                .env("BRUNNR_TOKEN", token)
                .output()
                .unwrap()
        })
    };
    let output = run(
        ALICE,
        vec![
            "norn".into(),
            "create".into(),
            "--device".into(),
            "MAC:11:22:33:44:55:66".into(),
            "--webhook".into(),
            hook,
            "--format".into(),
            "json".into(),
            "--duration".into(),
            "5m".into(),
        ],
    )
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let norn: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(norn["deviceID"], "mac:112233445566");
    let id = norn["id"].as_str().unwrap().to_owned();

    let output = run(
        PUBLISHER,
        vec![
            "publish".into(),
            "--device".into(),
            "mac:112233445566".into(),
            "--payload".into(),
            r#"{"from":"cli"}"#.into(),
        ],
    )
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let delivered: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(delivered["payload"], "eyJmcm9tIjoiY2xpIn0=");

    let output = run(ALICE, vec!["norn".into(), "list".into()])
        .await
        .unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(list.len(), 1);
    // Someone else's id: the server's 404 is shown and the command fails.
    let output = run(BOB, vec!["norn".into(), "get".into(), id.clone()])
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not_found"));
    let output = run(ALICE, vec!["norn".into(), "delete".into(), id])
        .await
        .unwrap();
    assert!(output.status.success());
    app.stop().await;
}

#[tokio::test]
async fn history_committed_before_a_sigkill_is_replayed_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let port = free_port();
    let mut child = start(dir.path(), port);
    wait_ready(&client, port).await;
    let response = client
        .post(format!("http://127.0.0.1:{port}/push_events"))
        .json(&serde_json::json!([
            {"accessid": "crash", "created_at": 1, "payload": "one"},
            {"accessid": "crash", "created_at": 2, "payload": "two"},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Well past one commit interval (100 ms by default).
    tokio::time::sleep(Duration::from_millis(600)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let port = free_port();
    let mut child = start(dir.path(), port);
    wait_ready(&client, port).await;
    let mut response = client
        .get(format!(
            "http://127.0.0.1:{port}/v1/stream?key=crash&since=0"
        ))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    while text.matches("\n\n").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("the replay arrives")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let payloads: Vec<String> = text
        .split("\n\n")
        .filter_map(|frame| frame.lines().find_map(|line| line.strip_prefix("data: ")))
        .map(|data| serde_json::from_str::<serde_json::Value>(data).unwrap())
        .map(|envelope| envelope["payload"].as_str().unwrap().to_owned())
        .collect();
    // Text payloads travel base64 in the envelope (only JSON stays JSON).
    use base64::Engine;
    let decoded: Vec<Vec<u8>> = payloads
        .iter()
        .map(|p| base64::engine::general_purpose::STANDARD.decode(p).unwrap())
        .collect();
    assert_eq!(decoded, [b"one".to_vec(), b"two".to_vec()]);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn tail_prints_replayed_and_live_events() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let port = free_port();
    let mut server = start(dir.path(), port);
    wait_ready(&client, port).await;
    let url = format!("http://127.0.0.1:{port}");
    let post = |payload: &'static str| {
        client
            .post(format!("{url}/events"))
            .header("content-type", "application/msgpack")
            .body(event("mac:112233445566", "device-status/online", payload).to_msgpack())
            .send()
    };
    assert_eq!(post(r#"{"n":"before"}"#).await.unwrap().status(), 202);

    let mut tail = tokio::process::Command::new(BIN)
        .args([
            "tail",
            "--url",
            &url,
            "MAC:11:22:33:44:55:66",
            "--since",
            "0",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("tail prints within the wait")
            .unwrap()
            .expect("tail keeps running");
        serde_json::from_str::<serde_json::Value>(&line).unwrap()
    };
    let replayed = next_line().await;
    assert_eq!(replayed["payload"]["n"], "before");
    assert_eq!(replayed["key"], "mac:112233445566");
    assert_eq!(post(r#"{"n":"after"}"#).await.unwrap().status(), 202);
    assert_eq!(next_line().await["payload"]["n"], "after");
    server.kill().unwrap();
    server.wait().unwrap();
}
