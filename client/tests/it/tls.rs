//! `wss://` against a real server serving TLS with a self-signed
//! certificate made in the test (rcgen), trusted through
//! `ClientBuilder::add_root_certificate`.

use concord_client::{Certificate, Client, Error, Pointer, TxResult};
use concord_server::{Config, TlsConfig};
use serde_json::json;

use crate::support::{doc_id, fast_config, start_server_with};

struct SelfSigned {
    _dir: tempfile::TempDir,
    pem: String,
    der: Vec<u8>,
    tls: TlsConfig,
}

fn self_signed() -> SelfSigned {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let generated = rcgen::generate_simple_self_signed(names).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    SelfSigned {
        _dir: dir,
        pem: generated.cert.pem(),
        der: generated.cert.der().to_vec(),
        tls: TlsConfig::new(cert, key),
    }
}

#[tokio::test]
async fn a_client_trusting_the_certificate_commits_over_wss() {
    let cert = self_signed();
    let server =
        start_server_with(Config { tls: Some(cert.tls.clone()), ..Config::default() }).await;
    let url = server.ws_url();
    assert!(url.starts_with("wss://"), "{url}");

    let client = Client::builder(&url)
        .config(fast_config())
        .add_root_certificate(Certificate::from_pem(cert.pem.as_bytes()).unwrap())
        .connect()
        .await
        .unwrap();
    let doc = client.open("secure").await.unwrap();
    let count = Pointer::parse("/count").unwrap();
    doc.transact(move |tx| -> TxResult<()> { Ok(tx.increment(&count, 1)?) }).await.unwrap();
    let (value, version) = server.document(&doc_id("secure")).await.unwrap();
    assert_eq!((value, version.0), (json!({"count": 1}), 1));
    assert_eq!(doc.version().await.unwrap().0, 1);

    // DER works as well as PEM, and only the added roots may be trusted.
    let der_only = Client::builder(&url)
        .platform_roots(false)
        .add_root_certificate(Certificate::from_der(cert.der.clone()))
        .connect()
        .await
        .unwrap();
    der_only.open("secure").await.unwrap();
    der_only.close().await;
    client.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_certificate_and_plain_ws_to_a_tls_port_fail_to_connect() {
    let cert = self_signed();
    let server =
        start_server_with(Config { tls: Some(cert.tls.clone()), ..Config::default() }).await;
    let url = server.ws_url();

    // The platform's roots do not include a certificate made a moment ago.
    let untrusting = Client::builder(&url).config(fast_config()).connect().await;
    assert!(matches!(untrusting, Err(Error::Connect(_) | Error::Tls(_))), "{untrusting:?}");
    // Another self-signed certificate is not this one.
    let other = self_signed();
    let wrong = Client::builder(&url)
        .platform_roots(false)
        .add_root_certificate(Certificate::from_pem(other.pem.as_bytes()).unwrap())
        .connect()
        .await;
    assert!(matches!(wrong, Err(Error::Connect(_))), "{wrong:?}");

    let plain = format!("ws://{}/ws", server.local_addr());
    let plain = Client::connect_with(&plain, fast_config()).await;
    assert!(plain.is_err(), "{plain:?}");
    // Three failed handshakes, counted as the server notices them.
    let failures = server.metrics().tls_handshake_failures.clone();
    let counted = async {
        while failures.get() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), counted).await.unwrap();
    server.shutdown().await;
}

#[test]
fn certificates_that_are_not_pem_are_refused() {
    assert!(matches!(Certificate::from_pem(b"not a certificate"), Err(Error::Tls(_))));
    assert!(matches!(Certificate::from_pem_bundle(b""), Err(Error::Tls(_))));
    let cert = self_signed();
    let bundle = format!("{}{}", cert.pem, self_signed().pem);
    assert_eq!(Certificate::from_pem_bundle(bundle.as_bytes()).unwrap().len(), 2);
}

#[tokio::test]
async fn a_der_certificate_that_does_not_parse_is_a_tls_error_at_connect() {
    let result = Client::builder("wss://127.0.0.1:1/ws")
        .platform_roots(false)
        .add_root_certificate(Certificate::from_der(vec![1, 2, 3]))
        .connect()
        .await;
    assert!(matches!(result, Err(Error::Tls(_))), "{result:?}");
}
