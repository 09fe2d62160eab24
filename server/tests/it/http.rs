//! The HTTP side: health, metrics, static files, the Origin allow-list,
//! graceful shutdown, and the real `concord serve` binary.

use std::process::Stdio;

use concord_engine::protocol::close_code;
use concord_server::Config;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{http_get, start, start_default, within, Binary, Client, End};

#[tokio::test]
async fn healthz_and_metrics_answer() {
    let server = start_default().await;
    let (status, body) = http_get(server.local_addr(), "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let mut a = Client::connect(&server).await;
    a.open("d", None).await;
    a.commit("d", "t-1", 0, json!([]), json!([{"op": "add", "path": "/x", "value": 1}])).await;
    a.expect("committed").await;
    a.commit("d", "t-2", 0, json!(["/x"]), json!([{"op": "add", "path": "/x", "value": 2}])).await;
    a.expect("rejected").await;
    a.send_text("nope".into()).await;
    a.expect_error("malformed_json").await;

    let (status, metrics) = http_get(server.local_addr(), "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "concord_sessions 1",
        "concord_commits_total 1",
        "concord_rejections_total{reason=\"conflict\"} 1",
        "concord_client_errors_total{code=\"malformed_json\"} 1",
        "concord_commit_latency_seconds_count 2",
        "concord_outbound_overflows_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_root_serves_a_placeholder_or_the_static_directory() {
    let server = start_default().await;
    let (status, body) = http_get(server.local_addr(), "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("Concord"), "{body}");
    server.shutdown().await;

    let dir = std::env::temp_dir().join(format!("concord-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<p>the app</p>").unwrap();
    let server = start(Config { static_dir: Some(dir.clone()), ..Config::default() }).await;
    let (status, body) = http_get(server.local_addr(), "/").await;
    assert_eq!((status, body.as_str()), (200, "<p>the app</p>"));
    let (status, _) = http_get(server.local_addr(), "/missing.js").await;
    assert_eq!(status, 404);
    server.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn origins_outside_the_allow_list_are_refused() {
    let config =
        Config { allowed_origins: vec!["https://app.example".into()], ..Config::default() };
    let server = start(config).await;
    let connect = |origin: &'static str| {
        let mut request = server.ws_url().into_client_request().unwrap();
        request.headers_mut().insert("origin", HeaderValue::from_static(origin));
        tokio_tungstenite::connect_async(request)
    };
    let refused = within("refusal", connect("https://evil.example")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(within("acceptance", connect("https://app.example")).await.is_ok());
    // Non-browser clients send no Origin and are allowed.
    Client::connect(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_tells_sessions_and_closes_them_with_1001() {
    let server = start_default().await;
    let mut a = Client::connect(&server).await;
    a.open("d", None).await;
    let stopping = tokio::spawn(server.shutdown());
    a.expect_error("shutting_down").await;
    assert_eq!(a.until_end().await, End::Close(Some(close_code::GOING_AWAY)));
    within("shutdown", stopping).await.unwrap();
}

#[tokio::test]
async fn the_binary_serves_prints_its_address_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let mut command = Binary::command();
    command.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(data.path());
    command.stderr(Stdio::null());
    let binary = Binary::spawn(command).await;
    let (status, body) = http_get(binary.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let mut a = Client::connect_url(&binary.ws_url).await;
    let exited = tokio::spawn(binary.terminate());
    a.expect_error("shutting_down").await;
    exited.await.unwrap();
}

#[tokio::test]
async fn a_connection_that_never_sends_its_handshake_is_dropped() {
    use tokio::io::AsyncReadExt;
    let config =
        Config { handshake_timeout: std::time::Duration::from_millis(100), ..Config::default() };
    let server = start(config).await;
    let mut idle = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    let mut buffer = Vec::new();
    // The server hangs up: the read ends (with EOF or a reset), it does not hang.
    let _ = within("the server to hang up", idle.read_to_end(&mut buffer)).await;
    // Others are unaffected.
    let (status, _) = http_get(server.local_addr(), "/healthz").await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn boolean_settings_take_1_and_logs_to_a_pipe_carry_no_colours() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("d");
    let mut command = Binary::command();
    command.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(&dir);
    command.env("CONCORD_MEMORY", "1").env("RUST_LOG", "info").stderr(Stdio::piped());
    let log = Binary::spawn(command).await.terminate().await;
    // CONCORD_MEMORY=1 means in memory: no data directory was made.
    assert!(!dir.exists(), "{} exists", dir.display());
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in a log written to a pipe: {log:?}");

    let refused = Binary::command()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CONCORD_MEMORY", "maybe")
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("invalid value 'maybe' for '--memory'"), "{message}");
}

#[test]
fn every_command_line_option_says_what_it_does() {
    for command in ["serve", "export", "import", "token"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{command} --help");
        let help = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = help.lines().collect();
        let mut options = 0;
        for (i, line) in lines.iter().enumerate() {
            let option = line.trim_start();
            if !(option.starts_with("--") || option.starts_with("-h")) {
                continue;
            }
            options += 1;
            // Short help puts the text beside the option, long help on the
            // next line; it must be prose, not straight away the
            // `[env: …]` or `[default: …]`.
            let beside = option.split_once("  ").map(|(_, text)| text.trim());
            let text = match beside {
                Some(text) if !text.is_empty() => text,
                _ => lines.get(i + 1).map_or("", |next| next.trim()),
            };
            assert!(
                !text.is_empty() && !text.starts_with('['),
                "concord {command} {option} has no help text"
            );
        }
        assert!(options > 0, "no options found in concord {command} --help");
    }
}

#[tokio::test]
async fn port_sets_the_port_of_the_listen_address() {
    let mut command = Binary::command();
    command.args(["serve", "--memory", "--listen", "127.0.0.1:1", "--port", "0"]);
    command.stderr(Stdio::null());
    // It exits before listening if --port is not taken (port 1 is not ours).
    let binary = Binary::spawn(command).await;
    let addr = binary.addr;
    // The host of --listen, the port of --port (0: a free one, not 1).
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 1);
    let (status, _) = http_get(addr, "/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_access_log_has_a_line_when_a_session_opens_and_when_it_closes() {
    let mut command = Binary::command();
    command.args(["serve", "--memory", "--listen", "127.0.0.1:0"]);
    command.env("RUST_LOG", "concord::access=info").stderr(Stdio::piped());
    let binary = Binary::spawn(command).await;
    let mut client = Client::connect_url(&binary.ws_url).await;
    let session = client.session.clone();
    client.ws.close(None).await.unwrap();
    // The server answers the close: the session has ended when it does.
    assert_eq!(client.until_end().await, End::Close(None));
    let log = binary.terminate().await;
    let of_session: Vec<&str> = log.lines().filter(|line| line.contains(&session)).collect();
    assert_eq!(of_session.len(), 2, "{log}");
    assert!(of_session[0].contains("session opened") && of_session[0].contains("peer=127.0.0.1:"));
    assert!(of_session[1].contains("session closed"), "{}", of_session[1]);
    assert!(of_session[1].contains("duration_ms=") && of_session[1].contains("reason="));
}
