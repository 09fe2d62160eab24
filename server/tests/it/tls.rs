//! TLS on the listener (`--tls-cert`/`--tls-key`, `Config::tls`): a
//! self-signed certificate made in the test with rcgen, trusted by the test's
//! client only.

use std::sync::Arc;

use concord_server::{Config, ServerBuilder, ServerError, TlsConfig, TlsError};
use futures_util::StreamExt;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream};

use crate::support::{start, wait_until, within, Binary, Client};

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM
/// files in a temporary directory.
pub struct TestCert {
    pub dir: tempfile::TempDir,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    pub fn new() -> Self {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let generated = rcgen::generate_simple_self_signed(names).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), generated.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), generated.signing_key.serialize_pem()).unwrap();
        Self { dir, der: generated.cert.der().clone() }
    }

    pub fn config(&self) -> TlsConfig {
        TlsConfig::new(self.dir.path().join("cert.pem"), self.dir.path().join("key.pem"))
    }

    /// A connector trusting this certificate (and nothing else).
    pub fn connector(&self) -> Connector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        #[allow(deprecated)] // ring lacks post-quantum key exchange; fine for a test
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Connector::Rustls(Arc::new(config))
    }
}

async fn connect_tls(url: &str, connector: Connector) -> Client {
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector));
    let (ws, _) = within("a wss connection", connecting).await.unwrap();
    assert!(matches!(ws.get_ref(), MaybeTlsStream::Rustls(_)));
    let mut client = Client { ws, session: String::new() };
    let welcome = client.expect("welcome").await;
    client.session = welcome["session"].as_str().unwrap().to_owned();
    client
}

/// Opens, commits and sees the commit acknowledged.
async fn commit_one(client: &mut Client) {
    let (_, version) = client.open("tls-doc", None).await;
    let writes = json!([{"op": "add", "path": "/secure", "value": true}]);
    client.commit("tls-doc", "t-1", version, json!([]), writes).await;
    let committed = client.expect("committed").await;
    assert_eq!(committed["tx_id"], "t-1");
}

#[tokio::test]
async fn a_tls_server_serves_wss_and_refuses_plain_and_untrusting_clients() {
    let cert = TestCert::new();
    let server = start(Config { tls: Some(cert.config()), ..Config::default() }).await;
    let url = server.ws_url();
    assert!(url.starts_with("wss://"), "{url}");
    assert!(server.http_url().starts_with("https://"));

    let mut client = connect_tls(&url, cert.connector()).await;
    commit_one(&mut client).await;

    // Plain WebSocket to the TLS port: the handshake cannot succeed.
    let plain = format!("ws://{}/ws", server.local_addr());
    let refused = within("a plain connection", tokio_tungstenite::connect_async(plain)).await;
    assert!(refused.is_err());
    // A client that does not trust the certificate refuses the server.
    let untrusting = TestCert::new().connector();
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(&url, None, true, Some(untrusting));
    assert!(within("an untrusting connection", connecting).await.is_err());
    let failures = server.metrics().tls_handshake_failures.clone();
    wait_until("both failed handshakes to be counted", || failures.get() >= 2).await;

    // Neither disturbed the live session.
    client
        .commit("tls-doc", "t-2", 1, json!([]), json!([{"op": "add", "path": "/n", "value": 2}]))
        .await;
    assert_eq!(client.expect("committed").await["tx_id"], "t-2");
    server.shutdown().await;
}

#[tokio::test]
async fn a_stalled_tls_handshake_times_out_without_affecting_others() {
    let cert = TestCert::new();
    let config = Config {
        tls: Some(cert.config()),
        handshake_timeout: std::time::Duration::from_millis(200),
        ..Config::default()
    };
    let server = start(config).await;
    // Connects and sends half a ClientHello, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80]).await.unwrap();
    let failures = server.metrics().tls_handshake_failures.clone();
    wait_until("the stalled handshake to time out", || failures.get() == 1).await;
    let mut client = connect_tls(&server.ws_url(), cert.connector()).await;
    commit_one(&mut client).await;
    server.shutdown().await;
}

#[tokio::test]
async fn unusable_certificate_or_key_files_are_typed_startup_errors() {
    let cert = TestCert::new();
    let missing = TlsConfig::new(cert.dir.path().join("nope.pem"), cert.config().private_key);
    let error = ServerBuilder::new().tls(missing).bind("127.0.0.1:0").await.unwrap_err();
    assert!(matches!(error, ServerError::Tls(TlsError::Read { .. })), "{error}");
    assert!(error.to_string().contains("nope.pem"), "{error}");

    // The key where the certificate should be, and the other way round.
    let swapped = TlsConfig::new(cert.config().private_key, cert.config().cert_chain);
    let error = ServerBuilder::new().tls(swapped).bind("127.0.0.1:0").await.unwrap_err();
    assert!(matches!(error, ServerError::Tls(TlsError::Certificate { .. })), "{error}");

    let key_only = TlsConfig::new(cert.config().cert_chain, cert.config().cert_chain);
    let error = ServerBuilder::new().tls(key_only).bind("127.0.0.1:0").await.unwrap_err();
    assert!(matches!(error, ServerError::Tls(TlsError::PrivateKey { .. })), "{error}");

    // A key that is not the certificate's.
    let other = TestCert::new();
    let mismatched = TlsConfig::new(cert.config().cert_chain, other.config().private_key);
    let error = ServerBuilder::new().tls(mismatched).bind("127.0.0.1:0").await.unwrap_err();
    assert!(matches!(error, ServerError::Tls(TlsError::Rejected(_))), "{error}");
}

#[tokio::test]
async fn the_binary_serves_wss_with_tls_cert_and_tls_key() {
    let cert = TestCert::new();
    let config = cert.config();
    let (cert_chain, private_key) = (config.cert_chain.to_str(), config.private_key.to_str());
    let args = ["--memory", "--tls-cert", cert_chain.unwrap(), "--tls-key", private_key.unwrap()];
    let Binary { mut child, ws_url: url, line, .. } = Binary::start(&args).await;
    assert!(line.contains("https://") && line.contains("wss://"), "{line}");

    let mut client = connect_tls(&url, cert.connector()).await;
    commit_one(&mut client).await;
    let plain = url.replacen("wss://", "ws://", 1);
    assert!(within("a plain connection", tokio_tungstenite::connect_async(plain)).await.is_err());

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    client.expect_error("shutting_down").await;
    // The close follows; then the server exits cleanly.
    while let Some(Ok(frame)) = within("the close", client.ws.next()).await {
        if matches!(frame, Message::Close(_)) {
            break;
        }
    }
    let status = within("the server to exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_binary_refuses_to_start_with_an_unreadable_key() {
    let cert = TestCert::new();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["serve", "--listen", "127.0.0.1:0", "--memory", "--tls-cert"])
        .arg(cert.config().cert_chain)
        .arg("--tls-key")
        .arg(cert.dir.path().join("missing-key.pem"))
        .output();
    let output = within("the server to exit", output).await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing-key.pem"), "{stderr}");
}
