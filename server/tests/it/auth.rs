//! Authentication and authorization against a real server (port 0) and the
//! real binary: every refusal is asserted together with the fact that
//! nothing changed.

use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use concord_engine::access::{Grants, Identity, Permissions};
use concord_engine::DocId;
use concord_server::auth::{
    self, AuthFuture, AuthRefusal, AuthRequest, Authenticator, JwtConfig, TokenRequest,
};
use concord_server::{Config, Mutation, RunningServer, ServerBuilder, ServerError};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;

use crate::support::{within, Client, End};

const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";

fn jwt_config() -> JwtConfig {
    JwtConfig { hs256_secret: Some(SECRET.to_vec()), ..JwtConfig::default() }
}

async fn start_with(builder: ServerBuilder, config: Config) -> RunningServer {
    builder.config(config).bind("127.0.0.1:0").await.unwrap()
}

async fn start_jwt() -> RunningServer {
    start_with(ServerBuilder::new().jwt(jwt_config()), Config::default()).await
}

fn grants(claim: Value) -> Grants {
    serde_json::from_value(claim).unwrap()
}

fn token_for(sub: &str, claim: Value, ttl: Duration) -> String {
    let request = TokenRequest {
        sub: sub.into(),
        name: Some(format!("{sub} (test)")),
        grants: grants(claim),
        ttl,
        audience: None,
        issuer: None,
    };
    auth::mint_hs256(SECRET, &request).unwrap()
}

fn token(sub: &str, claim: Value) -> String {
    token_for(sub, claim, Duration::from_secs(600))
}

fn everything() -> Value {
    json!({
        "docs": [{"pattern": "**", "access": "write"}],
        "topics": [{"pattern": ">", "allow": ["subscribe", "publish"]}],
        "methods": [{"pattern": "**", "allow": ["call", "register"]}],
    })
}

/// Signs arbitrary header and claims with `SECRET` (HS256), or leaves the
/// signature empty for `alg: none`.
fn hand_made(header: Value, claims: Value) -> String {
    let part = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let unsigned = format!("{}.{}", part(&header), part(&claims));
    if header["alg"] == "none" {
        return format!("{unsigned}.");
    }
    // Re-sign through the library so the signature is right for the claims.
    let request: auth::Claims = serde_json::from_value(claims).unwrap();
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &request, &key)
        .unwrap()
}

/// Connects with the token in the first message; returns the client after
/// its `welcome`.
async fn connect_with_message(server: &RunningServer, token: &str) -> (Client, Value) {
    let (ws, _) =
        within("connect", tokio_tungstenite::connect_async(server.ws_url())).await.unwrap();
    let mut client = Client { ws, session: String::new() };
    client.send(json!({"type": "auth", "token": token})).await;
    let welcome = client.expect("welcome").await;
    client.session = welcome["session"].as_str().unwrap().to_owned();
    (client, welcome)
}

/// Connects without a header and sends `first` as the first message;
/// returns the error that answers it and how the session ended.
async fn refused_after(server: &RunningServer, first: Value) -> (Value, End) {
    let (ws, _) =
        within("connect", tokio_tungstenite::connect_async(server.ws_url())).await.unwrap();
    let mut client = Client { ws, session: String::new() };
    client.send(first).await;
    let error = client.expect("error").await;
    (error, client.until_end().await)
}

/// The upgrade with an `Authorization` header: `Ok` with the client after
/// its welcome, or `Err` with the HTTP status and body.
async fn connect_with_header(
    server: &RunningServer,
    authorization: &str,
) -> Result<(Client, Value), (u16, String)> {
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(AUTHORIZATION, authorization.parse().unwrap());
    match within("connect", tokio_tungstenite::connect_async(request)).await {
        Ok((ws, _)) => {
            let mut client = Client { ws, session: String::new() };
            let welcome = client.expect("welcome").await;
            client.session = welcome["session"].as_str().unwrap().to_owned();
            Ok((client, welcome))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy);
            Err((response.status().as_u16(), body.unwrap_or_default().into_owned()))
        }
        Err(other) => panic!("unexpected connect error {other}"),
    }
}

/// A plain HTTP GET with headers; (status, body).
async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    crate::support::http_request(addr, "GET", path, headers, "").await
}

fn doc(raw: &str) -> DocId {
    DocId::parse(raw).unwrap()
}

/// Writes `value` at `/k` of `doc` through an all-powerful session.
async fn seed(server: &RunningServer, doc_id: &str, value: Value) {
    let (mut admin, _) = connect_with_message(server, &token("admin", everything())).await;
    let (_, version) = admin.open(doc_id, None).await;
    let writes = json!([{"op": "add", "path": "/k", "value": value}]);
    admin.commit(doc_id, "seed", version, json!([]), writes).await;
    loop {
        let message = admin.recv().await;
        if message["type"] == "committed" {
            break;
        }
        assert_eq!(message["type"], "change", "{message}");
    }
}

#[tokio::test]
async fn without_a_token_nothing_but_auth_is_taken_and_the_session_closes_4003() {
    let server = start_jwt().await;
    let commit = json!({"type": "commit", "tx": {"doc": "d", "tx_id": "t1", "base": 0,
        "writes": [{"op": "add", "path": "/x", "value": 1}]}});
    let (error, end) = refused_after(&server, commit).await;
    assert_eq!(error["code"], "unauthorized", "{error}");
    assert!(error["message"].as_str().unwrap().contains("first message must be"), "{error}");
    assert_eq!(end, End::Close(Some(4003)));
    let (open, end) = refused_after(&server, json!({"type": "open", "doc": "d"})).await;
    assert_eq!((open["code"].as_str(), end), (Some("unauthorized"), End::Close(Some(4003))));
    assert_eq!(server.document(&doc("d")).await.unwrap().1 .0, 0, "nothing was written");
    // A token in the URL is refused before the upgrade.
    let url = format!("{}?token={}", server.ws_url(), token("alice", everything()));
    let refused = tokio_tungstenite::connect_async(url).await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = refused else { panic!() };
    assert_eq!(response.status().as_u16(), 400);
    server.shutdown().await;
}

#[tokio::test]
async fn a_valid_token_in_the_first_message_or_the_header_names_the_session() {
    let server = start_jwt().await;
    let (_, welcome) = connect_with_message(&server, &token("alice", everything())).await;
    assert_eq!(
        (welcome["sub"].as_str(), welcome["name"].as_str()),
        (Some("alice"), Some("alice (test)"))
    );
    let bearer = format!("Bearer {}", token("bob", everything()));
    let (mut client, welcome) = connect_with_header(&server, &bearer).await.unwrap();
    assert_eq!(welcome["sub"], "bob");
    // The header decided: an auth message now is refused, the session stays.
    client.send(json!({"type": "auth", "token": token("carol", everything())})).await;
    client.expect_error("bad_message").await;
    let (_, version) = client.open("d", None).await;
    assert_eq!(version, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_signatures_alg_none_wrong_audience_and_issuer_are_refused() {
    let server = start_with(
        ServerBuilder::new().jwt(JwtConfig {
            audience: Some("concord-test".into()),
            issuer: Some("https://issuer.test".into()),
            ..jwt_config()
        }),
        Config::default(),
    )
    .await;
    let now = auth::unix_now();
    let claims = |aud: &str, iss: &str| json!({"sub": "mallory", "exp": now + 600, "aud": aud, "iss": iss, "concord": everything()});
    let good = hand_made(json!({"alg": "HS256"}), claims("concord-test", "https://issuer.test"));
    assert!(connect_with_header(&server, &format!("Bearer {good}")).await.is_ok());
    let (header, payload, signature) = {
        let mut parts = good.split('.');
        (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap())
    };
    let mut forged_signature = signature.to_owned();
    forged_signature.replace_range(0..4, if &signature[0..4] == "AAAA" { "BBBB" } else { "AAAA" });
    let cases = [
        ("bad signature", format!("{header}.{payload}.{forged_signature}"), "bad signature"),
        (
            "alg none",
            hand_made(
                json!({"alg": "none", "typ": "JWT"}),
                claims("concord-test", "https://issuer.test"),
            ),
            "malformed token",
        ),
        (
            "wrong audience",
            hand_made(json!({"alg": "HS256"}), claims("someone-else", "https://issuer.test")),
            "audience",
        ),
        (
            "wrong issuer",
            hand_made(json!({"alg": "HS256"}), claims("concord-test", "https://evil.test")),
            "issuer",
        ),
        ("not a JWT", "hello".to_owned(), "malformed"),
    ];
    for (what, token, why) in cases {
        let (status, body) =
            connect_with_header(&server, &format!("Bearer {token}")).await.unwrap_err();
        assert_eq!(status, 401, "{what}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "unauthorized", "{what}");
        assert!(body["message"].as_str().unwrap().contains(why), "{what}: {body}");
        assert!(!body["message"].as_str().unwrap().contains(&token), "the token is never echoed");
        let (error, end) = refused_after(&server, json!({"type": "auth", "token": token})).await;
        assert_eq!(
            (error["code"].as_str(), end),
            (Some("unauthorized"), End::Close(Some(4003))),
            "{what}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_is_refused_and_a_session_whose_token_expires_is_told_then_closed_4004() {
    let config = Config { token_expiry_grace: Duration::from_millis(200), ..Config::default() };
    let jwt = JwtConfig { leeway: Some(Duration::ZERO), ..jwt_config() };
    let server = start_with(ServerBuilder::new().jwt(jwt), config).await;
    let now = auth::unix_now();
    let expired = hand_made(
        json!({"alg": "HS256"}),
        json!({"sub": "late", "exp": now - 5, "concord": everything()}),
    );
    let (status, body) =
        connect_with_header(&server, &format!("Bearer {expired}")).await.unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("token_expired"), "{body}");
    let (error, end) = refused_after(&server, json!({"type": "auth", "token": expired})).await;
    assert_eq!((error["code"].as_str(), end), (Some("token_expired"), End::Close(Some(4004))));

    // Valid for one more second: told when it expires, closed after grace.
    let short = token_for("brief", everything(), Duration::from_secs(1));
    let (mut client, _) = connect_with_message(&server, &short).await;
    client.open("d", None).await;
    let told = client.expect_error("token_expired").await;
    assert!(told["message"].as_str().unwrap().contains("reconnect"), "{told}");
    assert_eq!(client.until_end().await, End::Close(Some(4004)));
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_for_one_board_cannot_open_another_and_the_refusal_reveals_nothing() {
    let server = start_jwt().await;
    seed(&server, "board:b", json!("secret")).await;
    let claim = json!({"docs": [{"pattern": "board:a", "access": "write"}]});
    let (mut client, _) = connect_with_message(&server, &token("alice", claim)).await;
    client.send(json!({"type": "open", "doc": "board:b"})).await;
    let existing = client.expect_error("forbidden").await;
    assert_eq!(existing["doc"], "board:b");
    client.send(json!({"type": "open", "doc": "board:zzz"})).await;
    let missing = client.expect_error("forbidden").await;
    assert_eq!(
        existing["message"].as_str().unwrap().replace("board:b", "X"),
        missing["message"].as_str().unwrap().replace("board:zzz", "X"),
        "an existing and a missing document are refused alike"
    );
    // Nothing of board:b reached the session; committing to it is not_open.
    client.commit("board:b", "t1", 1, json!([]), json!([{"op": "remove", "path": "/k"}])).await;
    client.expect_error("not_open").await;
    assert_eq!(server.document(&doc("board:b")).await.unwrap().0, json!({"k": "secret"}));
    let (_, version) = client.open("board:a", None).await;
    assert_eq!(version, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn read_only_documents_and_write_scopes_refuse_the_whole_commit() {
    let server = start_jwt().await;
    seed(&server, "board:a", json!(1)).await;
    let claim = json!({"docs": [
        {"pattern": "board:*", "access": "read"},
        {"pattern": "board:a", "access": "write", "scopes": ["/shapes", "/cursors/{sub}"]},
    ]});
    let (mut client, _) = connect_with_message(&server, &token("alice", claim)).await;
    let (_, version) = client.open("board:a", None).await;
    seed(&server, "board:ro", json!(2)).await;
    let (_, ro_version) = client.open("board:ro", None).await;

    // Read-only document.
    let write = json!([{"op": "replace", "path": "/k", "value": 3}]);
    client.commit("board:ro", "t-ro", ro_version, json!([]), write).await;
    let rejected = client.expect("rejected").await;
    assert_eq!(rejected["tx_id"], "t-ro");
    assert_eq!(rejected["rejection"]["reason"], "forbidden", "{rejected}");
    assert!(rejected["rejection"]["message"].as_str().unwrap().contains("read-only"));

    // An allowed op and one outside the scopes: the whole commit is refused.
    let mixed = json!([
        {"op": "add", "path": "/shapes", "value": {"s1": 1}},
        {"op": "add", "path": "/cursors", "value": {}},
        {"op": "replace", "path": "/k", "value": 99},
    ]);
    client.commit("board:a", "t-mixed", version, json!([]), mixed).await;
    let rejected = client.expect("rejected").await;
    let rejection = &rejected["rejection"];
    assert_eq!(
        (
            rejection["reason"].as_str(),
            rejection["op_index"].as_u64(),
            rejection["pointer"].as_str()
        ),
        (Some("forbidden"), Some(1), Some("/cursors")),
        "{rejected}"
    );
    assert_eq!(
        server.document(&doc("board:a")).await.unwrap(),
        (json!({"k": 1}), concord_engine::Version(version))
    );
    assert_eq!(server.document(&doc("board:ro")).await.unwrap().0, json!({"k": 2}));

    // Inside the scopes it commits, {sub} being the subject.
    let inside = json!([
        {"op": "add", "path": "/shapes", "value": {"s1": 1}},
    ]);
    client.commit("board:a", "t-in", version, json!([]), inside).await;
    client.expect("committed").await;
    let (mut admin, _) = connect_with_message(&server, &token("admin", everything())).await;
    admin.open("board:a", None).await;
    admin
        .commit(
            "board:a",
            "mk",
            version + 1,
            json!([]),
            json!([{"op": "add", "path": "/cursors", "value": {}}]),
        )
        .await;
    admin.expect("committed").await;
    client.expect("change").await;
    let mine = json!([{"op": "add", "path": "/cursors/alice", "value": {"x": 1}}]);
    client.commit("board:a", "t-cursor", version + 2, json!([]), mine).await;
    client.expect("committed").await;
    let theirs = json!([{"op": "add", "path": "/cursors/bob", "value": {"x": 1}}]);
    client.commit("board:a", "t-other", version + 3, json!([]), theirs).await;
    assert_eq!(client.expect("rejected").await["rejection"]["pointer"], "/cursors/bob");
    server.shutdown().await;
}

#[tokio::test]
async fn topics_and_methods_outside_the_grants_are_forbidden() {
    let server = ServerBuilder::new()
        .jwt(jwt_config())
        .procedure("math.add", |_ctx, params| async move { Ok(params) })
        .procedure("admin.reset", |_ctx, _params| async move { Ok(json!("reset")) })
        .mutator("game.settle", |_call| Ok(Mutation::default()))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let claim = json!({
        "topics": [{"pattern": "chat.*", "allow": ["subscribe"]},
                   {"pattern": "chat.mine", "allow": ["publish"]}],
        "methods": [{"pattern": "math.*", "allow": ["call"]},
                    {"pattern": "me.*", "allow": ["register"]}],
    });
    let (mut client, _) = connect_with_message(&server, &token("alice", claim)).await;
    client.send(json!({"type": "subscribe", "topic": "chat.room1"})).await;
    client.expect("subscribed").await;
    for (message, what) in [
        (json!({"type": "subscribe", "topic": "chat.>"}), "subscribing to chat.>"),
        (json!({"type": "subscribe", "topic": "news.x"}), "subscribing to news.x"),
        (json!({"type": "publish", "topic": "chat.room1", "data": 1}), "publishing to chat.room1"),
        (json!({"type": "register", "method": "math.add2"}), "registering math.add2"),
    ] {
        client.send(message).await;
        let error = client.expect_error("forbidden").await;
        assert!(error["message"].as_str().unwrap().contains(what), "{error}");
    }
    client.send(json!({"type": "publish", "topic": "chat.mine", "data": 1, "ack": 7})).await;
    client.expect("published").await;
    client.send(json!({"type": "register", "method": "me.ping"})).await;
    client.expect("registered").await;
    client.rpc(json!({"jsonrpc": "2.0", "id": 1, "method": "math.add", "params": [1]})).await;
    assert_eq!(client.expect_rpc().await["result"], json!([1]));
    for (id, method) in [(2, "admin.reset"), (3, "game.settle")] {
        client
            .rpc(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"doc": "d"}}))
            .await;
        let answer = client.expect_rpc().await;
        assert_eq!(answer["id"], id);
        assert_eq!(answer["error"]["code"], -32005, "{answer}");
        assert_eq!(answer["error"]["data"]["code"], "forbidden");
    }
    assert_eq!(server.document(&doc("d")).await.unwrap().1 .0, 0, "the mutator never ran");
    server.shutdown().await;
}

#[tokio::test]
async fn get_docs_and_history_take_the_same_token_and_metrics_its_own() {
    let server = start_with(
        ServerBuilder::new().jwt(jwt_config()).metrics_token("metrics-secret"),
        Config::default(),
    )
    .await;
    seed(&server, "board:a", json!(1)).await;
    let addr = server.local_addr();
    let (status, body) = http_get(addr, "/docs/board:a", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"));
    let bad = format!("Bearer {}x", token("alice", everything()));
    assert_eq!(http_get(addr, "/docs/board:a", &[("Authorization", &bad)]).await.0, 401);
    let other = format!(
        "Bearer {}",
        token("eve", json!({"docs": [{"pattern": "board:z", "access": "read"}]}))
    );
    for path in ["/docs/board:a", "/docs/board:a?version=1", "/docs/board:nope"] {
        let (status, body) = http_get(addr, path, &[("Authorization", &other)]).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("forbidden"));
    }
    let reader = format!(
        "Bearer {}",
        token("ann", json!({"docs": [{"pattern": "board:*", "access": "read"}]}))
    );
    let (status, body) = http_get(addr, "/docs/board:a", &[("Authorization", &reader)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["value"], json!({"k": 1}));

    assert_eq!(http_get(addr, "/metrics", &[]).await.0, 401);
    assert_eq!(http_get(addr, "/metrics", &[("Authorization", "Bearer wrong")]).await.0, 401);
    let (status, metrics) =
        http_get(addr, "/metrics", &[("Authorization", "Bearer metrics-secret")]).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("concord_auth_failures_total{reason=\"invalid\"} 1"), "{metrics}");
    server.shutdown().await;
}

#[tokio::test]
async fn failed_authentications_are_rate_limited_per_address() {
    let server = start_jwt().await;
    for _ in 0..auth::AUTH_FAILURES_PER_MINUTE_MAX {
        let (status, _) = connect_with_header(&server, "Bearer nonsense").await.unwrap_err();
        assert_eq!(status, 401);
    }
    // Past the limit even a good token is refused, unread.
    let good = format!("Bearer {}", token("alice", everything()));
    let (status, body) = connect_with_header(&server, &good).await.unwrap_err();
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("rate_limited"));
    let limited = server.metrics().auth_failures.with_label_values(&["rate_limited"]).get();
    assert_eq!(limited, 1);
    server.shutdown().await;
}

/// An embedder's own user database.
struct Users;

impl Authenticator for Users {
    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a> {
        Box::pin(async move {
            if !request.remote_addr.ip().is_loopback() {
                return Err(AuthRefusal::Invalid("only local users".into()));
            }
            match request.token.as_str() {
                "key-of-ann" => Ok(Identity {
                    sub: "ann".into(),
                    name: Some("Ann".into()),
                    permissions: Permissions::resolve(
                        &grants(json!({"docs": [{"pattern": "notes/ann/**", "access": "write"}]})),
                        "ann",
                    )
                    .unwrap(),
                    expires_at: None,
                }),
                _ => Err(AuthRefusal::Invalid("unknown key".into())),
            }
        })
    }
}

#[tokio::test]
async fn an_embedder_authenticator_decides_identity_and_permissions() {
    let server = start_with(ServerBuilder::new().authenticator(Users), Config::default()).await;
    let (mut client, welcome) = connect_with_message(&server, "key-of-ann").await;
    assert_eq!((welcome["sub"].as_str(), welcome["name"].as_str()), (Some("ann"), Some("Ann")));
    client.open("notes/ann/today", None).await;
    client.send(json!({"type": "open", "doc": "notes/bob/today"})).await;
    client.expect_error("forbidden").await;
    let (error, end) = refused_after(&server, json!({"type": "auth", "token": "key-of-eve"})).await;
    assert!(error["message"].as_str().unwrap().contains("unknown key"), "{error}");
    assert_eq!(end, End::Close(Some(4003)));
    server.shutdown().await;
}

/// The PKCS#8 DER of an Ed25519 private key with this seed.
fn ed25519_pkcs8(seed: [u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    der
}

fn ed25519_jwk(seed: [u8; 32], kid: &str) -> Value {
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid, "x": URL_SAFE_NO_PAD.encode(public)})
}

fn eddsa_token(seed: [u8; 32], kid: &str, sub: &str) -> String {
    let claims = json!({"sub": sub, "exp": auth::unix_now() + 600, "concord": everything()});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.into());
    let key = jsonwebtoken::EncodingKey::from_ed_der(&ed25519_pkcs8(seed));
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::test]
async fn eddsa_keys_come_from_a_jwks_file_that_rotates_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("keys.json");
    let (first, second) = ([1u8; 32], [2u8; 32]);
    std::fs::write(&jwks, json!({"keys": [ed25519_jwk(first, "k1")]}).to_string()).unwrap();
    let config = JwtConfig { jwks_file: Some(jwks.clone()), ..JwtConfig::default() };
    let server = start_with(ServerBuilder::new().jwt(config), Config::default()).await;
    let bearer = |token: String| format!("Bearer {token}");
    assert!(connect_with_header(&server, &bearer(eddsa_token(first, "k1", "a"))).await.is_ok());
    // Algorithm confusion: an HS256 token keyed with the public key's bytes.
    let public = ed25519_jwk(first, "k1")["x"].as_str().unwrap().to_owned();
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "m", "exp": auth::unix_now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    let (status, body) = connect_with_header(&server, &bearer(confused)).await.unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("HS256 tokens are not accepted"), "{body}");

    // Rotate: k2 replaces k1 in the file; the next handshake sees it.
    std::fs::write(
        &jwks,
        json!({"keys": [ed25519_jwk(second, "k2"), {"kty": "oct", "k": "AAAA"}]}).to_string(),
    )
    .unwrap();
    // Same length as before is possible; make sure the modification time moves.
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options().write(true).open(&jwks).unwrap().set_modified(later).unwrap();
    let (status, body) =
        connect_with_header(&server, &bearer(eddsa_token(first, "k1", "a"))).await.unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("kid"), "{body}");
    let (_, welcome) =
        connect_with_header(&server, &bearer(eddsa_token(second, "k2", "b"))).await.unwrap();
    assert_eq!(welcome["sub"], "b");
    // An explicit reload (SIGHUP's) of a broken file keeps the old keys.
    std::fs::write(&jwks, "not json").unwrap();
    assert!(server.reload_auth().is_err());
    assert!(connect_with_header(&server, &bearer(eddsa_token(second, "k2", "b"))).await.is_ok());
    server.shutdown().await;
}

#[tokio::test]
async fn without_authentication_only_loopback_is_served_unless_insecure_open() {
    let refused = ServerBuilder::new().bind("0.0.0.0:0").await.unwrap_err();
    assert!(matches!(refused, ServerError::InsecureOpen { .. }), "{refused}");
    assert!(refused.to_string().contains("--insecure-open"));
    let open = Config { insecure_open: true, ..Config::default() };
    let server = ServerBuilder::new().config(open).bind("0.0.0.0:0").await.unwrap();
    server.shutdown().await;
    let server = ServerBuilder::new().jwt(jwt_config()).bind("0.0.0.0:0").await.unwrap();
    server.shutdown().await;

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["serve", "--memory", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to serve without authentication"), "{stderr}");
}

#[tokio::test]
async fn concord_token_mints_what_concord_serve_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mint = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
            .arg("token")
            .arg("--secret-file")
            .arg(&secret)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let token =
        mint(&["--sub", "alice", "--name", "Alice", "--ttl", "5m", "--write", "board:*=/shapes"]);
    let server =
        crate::support::Binary::start(&["--memory", "--jwt-secret-file", secret.to_str().unwrap()])
            .await;
    let mut request = server.ws_url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    let (ws, _) = within("connect", tokio_tungstenite::connect_async(request)).await.unwrap();
    let mut client = Client { ws, session: String::new() };
    let welcome = client.expect("welcome").await;
    assert_eq!((welcome["sub"].as_str(), welcome["name"].as_str()), (Some("alice"), Some("Alice")));
    let (_, version) = client.open("board:x", None).await;
    client
        .commit(
            "board:x",
            "t1",
            version,
            json!([]),
            json!([{"op": "add", "path": "/n", "value": 1}]),
        )
        .await;
    assert_eq!(client.expect("rejected").await["rejection"]["reason"], "forbidden");
    client
        .commit(
            "board:x",
            "t2",
            version,
            json!([]),
            json!([{"op": "add", "path": "/shapes", "value": {}}]),
        )
        .await;
    client.expect("committed").await;
    // No token: the binary refuses the session too.
    let (ws, _) =
        within("connect", tokio_tungstenite::connect_async(server.ws_url.as_str())).await.unwrap();
    let mut anonymous = Client { ws, session: String::new() };
    anonymous.send(json!({"type": "open", "doc": "board:x"})).await;
    anonymous.expect_error("unauthorized").await;
    // A bad flag is refused before anything is signed.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["token", "--secret-file"])
        .arg(&secret)
        .args(["--sub", "a", "--write", "d=nopointer"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a JSON Pointer"));
}

/// A plain HTTP/1.1 POST of a JSON body; (status, body).
async fn http_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let headers = [("Content-Type", "application/json")];
    crate::support::http_request(addr, "POST", path, &headers, body).await
}

#[tokio::test]
async fn the_demo_mode_hands_out_board_tokens_and_read_tokens_cannot_write() {
    let open = crate::support::start_default().await;
    let (status, body) = http_get(open.local_addr(), "/demo/config", &[]).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (200, json!({"auth": false}))
    );
    assert_eq!(http_post(open.local_addr(), "/demo/token", r#"{"name":"x"}"#).await.0, 404);
    open.shutdown().await;

    let server = start_with(ServerBuilder::new().demo_auth(true), Config::default()).await;
    let addr = server.local_addr();
    let (_, body) = http_get(addr, "/demo/config", &[]).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"auth": true}));
    let ask = |body: Value| async move {
        let (status, answer) = http_post(addr, "/demo/token", &body.to_string()).await;
        (status, serde_json::from_str::<Value>(&answer).unwrap())
    };
    let (status, writer) = ask(json!({"name": "Ann", "access": "write"})).await;
    assert_eq!(status, 200, "{writer}");
    assert!(writer["sub"].as_str().unwrap().starts_with("demo-"));
    let (_, viewer) = ask(json!({"name": "Vic", "sub": "vic-1", "access": "read"})).await;
    assert_eq!(viewer["sub"], "vic-1");
    assert_eq!(ask(json!({"name": ""})).await.0, 400);
    assert_eq!(ask(json!({"name": "x", "admin": true})).await.0, 400);

    let (mut ann, welcome) = connect_with_message(&server, writer["token"].as_str().unwrap()).await;
    assert_eq!(welcome["name"], "Ann");
    let (_, version) = ann.open("board:demo", None).await;
    ann.commit(
        "board:demo",
        "a1",
        version,
        json!([]),
        json!([{"op": "add", "path": "/shapes", "value": {}}]),
    )
    .await;
    ann.expect("committed").await;
    let (mut vic, _) = connect_with_message(&server, viewer["token"].as_str().unwrap()).await;
    let (_, version) = vic.open("board:demo", None).await;
    vic.commit(
        "board:demo",
        "v1",
        version,
        json!([]),
        json!([{"op": "remove", "path": "/shapes"}]),
    )
    .await;
    assert_eq!(vic.expect("rejected").await["rejection"]["reason"], "forbidden");
    vic.send(json!({"type": "open", "doc": "secret"})).await;
    vic.expect_error("forbidden").await;
    assert_eq!(server.document(&doc("board:demo")).await.unwrap().0, json!({"shapes": {}}));
    server.shutdown().await;

    // The binary's --auth (what `scripts/serve.sh --auth` passes) is the demo mode.
    let binary = crate::support::Binary::start(&["--memory", "--auth"]).await;
    let (status, body) = http_get(binary.addr, "/demo/config", &[]).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (200, json!({"auth": true}))
    );
    let (status, _) = http_post(binary.addr, "/demo/token", r#"{"name":"Ann"}"#).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rs256_tokens_verify_against_the_jwks_and_cannot_pose_as_another_algorithm() {
    // A 2048-bit test key pair made once with openssl: the private key as
    // PKCS#1 DER, the public key as a JWK (kid "r1"). Test data only.
    let private = include_bytes!("data/rsa-test-private.der");
    let public: Value = serde_json::from_str(include_str!("data/rsa-test.jwk.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("keys.json");
    std::fs::write(&jwks, json!({"keys": [public.clone()]}).to_string()).unwrap();
    let config = JwtConfig { jwks_file: Some(jwks), ..JwtConfig::default() };
    let server = start_with(ServerBuilder::new().jwt(config), Config::default()).await;
    let claims = json!({"sub": "rita", "exp": auth::unix_now() + 600, "concord": everything()});
    let sign = |alg: jsonwebtoken::Algorithm, kid: Option<&str>| {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = kid.map(str::to_owned);
        let key = jsonwebtoken::EncodingKey::from_rsa_der(private);
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let (_, welcome) = connect_with_header(
        &server,
        &format!("Bearer {}", sign(jsonwebtoken::Algorithm::RS256, Some("r1"))),
    )
    .await
    .unwrap();
    assert_eq!(welcome["sub"], "rita");
    // Without a kid, the only RS256 key is used.
    assert!(connect_with_header(
        &server,
        &format!("Bearer {}", sign(jsonwebtoken::Algorithm::RS256, None))
    )
    .await
    .is_ok());
    // The same key under another RSA algorithm is not accepted.
    let (status, body) = connect_with_header(
        &server,
        &format!("Bearer {}", sign(jsonwebtoken::Algorithm::RS512, Some("r1"))),
    )
    .await
    .unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("not accepted"), "{body}");
    // HS256 keyed with the public modulus: no HMAC key exists to check it.
    let modulus = public["n"].as_str().unwrap();
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(modulus.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        connect_with_header(&server, &format!("Bearer {confused}")).await.unwrap_err().0,
        401
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_log_names_who_was_refused_and_why_but_never_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["serve", "--memory", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--jwt-secret-file")
        .arg(&secret)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = within("the address line", lines.next_line()).await.unwrap().unwrap();
    let addr = line.split_whitespace().find_map(|w| w.strip_prefix("http://")).unwrap().to_owned();
    let url = format!("ws://{addr}/ws");
    let forged = format!("{}x", token("mallory", everything()));
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(AUTHORIZATION, format!("Bearer {forged}").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    let (ws, _) = within("connect", tokio_tungstenite::connect_async(url.as_str())).await.unwrap();
    let mut client = Client { ws, session: String::new() };
    client.send(json!({"type": "auth", "token": forged})).await;
    client.expect_error("unauthorized").await;
    // Stop the server (SIGTERM) and read everything it logged.
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let output = within("the server to exit", child.wait_with_output()).await.unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    let refusals: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["fields"]["message"] == "authentication refused")
        .collect();
    assert_eq!(refusals.len(), 2, "{log}");
    for event in &refusals {
        assert_eq!(event["fields"]["remote"], "127.0.0.1", "{event}");
        assert!(event["fields"]["reason"].as_str().unwrap().contains("bad signature"), "{event}");
    }
    let signature = forged.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "the log holds no part of the token");
    assert!(!log.contains(forged.split('.').nth(1).unwrap()), "not even its claims");
}

#[tokio::test]
async fn behind_a_trusted_proxy_failures_count_per_forwarded_client() {
    let trusted = vec![auth::TrustedProxy::parse("127.0.0.0/8").unwrap()];
    let config = Config { trusted_proxies: trusted, ..Config::default() };
    let server = start_with(ServerBuilder::new().jwt(jwt_config()), config).await;
    let connect_as = |client: &'static str, authorization: String| {
        let mut request = server.ws_url().into_client_request().unwrap();
        request.headers_mut().insert(AUTHORIZATION, authorization.parse().unwrap());
        request.headers_mut().insert("x-forwarded-for", client.parse().unwrap());
        async move {
            match tokio_tungstenite::connect_async(request).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    response.status().as_u16()
                }
                Err(other) => panic!("{other}"),
            }
        }
    };
    for _ in 0..auth::AUTH_FAILURES_PER_MINUTE_MAX {
        assert_eq!(connect_as("203.0.113.7", "Bearer nonsense".into()).await, 401);
    }
    let good = format!("Bearer {}", token("alice", everything()));
    assert_eq!(connect_as("203.0.113.7", good.clone()).await, 429, "the guesser is limited");
    assert_eq!(
        connect_as("203.0.113.8", good).await,
        101,
        "its neighbours behind the proxy are not"
    );
    server.shutdown().await;
}
