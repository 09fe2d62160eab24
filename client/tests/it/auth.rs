//! The token provider, the client's answers to refused and expired
//! credentials, `welcome`'s identity, and typed refusals (forbidden,
//! invalid, vetoed; an open refused as forbidden), against a scripted
//! protocol-v1 server that speaks exactly the messages docs/protocol.md
//! gives for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_client::{
    Client, ClientConfig, ConnectionState, Error, Identity, Pointer, TransactError, TxResult,
};
use concord_engine::protocol::{close_code, ClientMessage, ErrorCode, ServerMessage};
use concord_engine::{Rejection, Version};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::support::fast_config;

const STEP: Duration = Duration::from_secs(10);

/// What the scripted server does with one connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// HTTP 401 on the upgrade.
    Refuse,
    /// `welcome`, then serve.
    Welcome,
    /// Waits for the test's gate, then `welcome` and serve.
    GatedWelcome,
    /// `welcome`, then `error token_expired` and close 4004.
    WelcomeThenExpire,
    /// `welcome`, then `error unauthorized` and close 4003.
    WelcomeThenUnauthorized,
}

struct Scripted {
    url: String,
    /// The `Authorization` header of each connection, in order.
    tokens: Arc<Mutex<Vec<Option<String>>>>,
    /// Commits received, by the first path they write.
    commits: Arc<Mutex<Vec<String>>>,
    gate: Arc<Notify>,
}

/// Starts a server answering connection `n` (from 1) with `script(n)`.
async fn scripted(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let tokens: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let commits: Arc<Mutex<Vec<String>>> = Arc::default();
    let gate = Arc::new(Notify::new());
    let (seen, received, opened) = (tokens.clone(), commits.clone(), gate.clone());
    tokio::spawn(async move {
        let mut count = 0;
        while let Ok((stream, _)) = listener.accept().await {
            count += 1;
            let answer = script(count);
            let (seen, received, opened) = (seen.clone(), received.clone(), opened.clone());
            tokio::spawn(async move {
                if answer == Answer::GatedWelcome {
                    opened.notified().await;
                }
                // tungstenite's callback signature, not ours.
                #[allow(clippy::result_large_err)]
                let callback = |request: &Request, response: Response| {
                    let token = request
                        .headers()
                        .get("authorization")
                        .map(|value| value.to_str().unwrap().to_owned());
                    seen.lock().unwrap().push(token);
                    if answer == Answer::Refuse {
                        let mut refusal =
                            ErrorResponse::new(Some("the token does not verify".into()));
                        *refusal.status_mut() = 401.try_into().unwrap();
                        return Err(refusal);
                    }
                    Ok(response)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                serve(ws, count, answer, received).await;
            });
        }
    });
    Scripted { url, tokens, commits, gate }
}

fn frame(message: &ServerMessage) -> Message {
    Message::text(serde_json::to_string(message).unwrap())
}

async fn serve(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    n: usize,
    answer: Answer,
    commits: Arc<Mutex<Vec<String>>>,
) {
    let welcome = ServerMessage::Welcome {
        protocol: 1,
        session: format!("s{n}"),
        sub: Some("alice".into()),
        name: Some("Alice".into()),
    };
    ws.send(frame(&welcome)).await.unwrap();
    let ending = match answer {
        Answer::WelcomeThenExpire => Some((ErrorCode::TokenExpired, close_code::TOKEN_EXPIRED)),
        Answer::WelcomeThenUnauthorized => {
            Some((ErrorCode::Unauthorized, close_code::UNAUTHORIZED))
        }
        _ => None,
    };
    if let Some((code, close)) = ending {
        let error = ServerMessage::error(code, "token".into());
        let _ = ws.send(frame(&error)).await;
        let close = CloseFrame { code: CloseCode::from(close), reason: "token".into() };
        let _ = ws.close(Some(close)).await;
        return;
    }
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else { continue };
        let replies = match serde_json::from_str::<ClientMessage>(text.as_str()).unwrap() {
            ClientMessage::Open { doc, .. } if doc.as_str().starts_with("forbidden") => {
                vec![ServerMessage::Error {
                    code: ErrorCode::Forbidden,
                    message: format!("no grant to read {doc}"),
                    doc: Some(doc),
                    tx_id: None,
                    topic: None,
                    method: None,
                }]
            }
            ClientMessage::Open { doc, .. } => vec![
                ServerMessage::Snapshot { doc: doc.clone(), version: Version(0), value: json!({}) },
                ServerMessage::Opened { doc, version: Version(0) },
            ],
            ClientMessage::Commit { tx } => {
                let path = tx.writes[0].path().clone();
                commits.lock().unwrap().push(path.to_string());
                let message = format!("{path} refused");
                let rejection = match path.to_string().as_str() {
                    "/forbidden" => Rejection::Forbidden { op_index: 0, pointer: path, message },
                    "/invalid" => Rejection::Invalid { pointer: path, message },
                    _ => Rejection::Vetoed { message },
                };
                vec![ServerMessage::Rejected { doc: tx.doc, tx_id: tx.tx_id, rejection }]
            }
            _ => vec![],
        };
        for reply in &replies {
            if ws.send(frame(reply)).await.is_err() {
                return;
            }
        }
    }
}

/// A provider handing out `t1`, `t2`, … and counting its calls.
fn counting_provider(
    calls: Arc<AtomicUsize>,
) -> impl Fn() -> std::future::Ready<Result<String, std::io::Error>> + Send + Sync + 'static {
    move || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(Ok(format!("t{n}")))
    }
}

async fn wait_for_state(client: &Client, what: impl Fn(&ConnectionState) -> bool) {
    let mut changes = client.state_changes();
    let reached = tokio::time::timeout(STEP, changes.wait_for(|state| what(state))).await;
    assert!(matches!(reached, Ok(Ok(_))), "state never reached; now {:?}", client.state());
}

#[tokio::test]
async fn the_token_provider_is_asked_on_every_connect_and_an_expired_token_reconnects() {
    let server =
        scripted(|n| if n == 1 { Answer::WelcomeThenExpire } else { Answer::Welcome }).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let client = Client::builder(&server.url)
        .config(fast_config())
        .token_provider(counting_provider(calls.clone()))
        .connect()
        .await
        .unwrap();
    // token_expired, then close 4004: a new session with a fresh token.
    wait_for_state(
        &client,
        |state| matches!(state, ConnectionState::Connected { session, .. } if session == "s2"),
    )
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let tokens = server.tokens.lock().unwrap().clone();
    assert_eq!(tokens, [Some("Bearer t1".to_owned()), Some("Bearer t2".to_owned())]);
    let alice = Identity { sub: "alice".into(), name: Some("Alice".into()) };
    assert_eq!(client.identity(), Some(alice));
    client.close().await;
    assert_eq!(client.state(), ConnectionState::Closed);
}

#[tokio::test]
async fn a_refused_token_fails_the_first_connect_with_a_typed_error() {
    let server = scripted(|_| Answer::Refuse).await;
    let result = Client::builder(&server.url)
        .config(fast_config())
        .token_provider(|| async { Ok::<_, std::io::Error>("forged".to_owned()) })
        .connect()
        .await;
    match result {
        Err(Error::Unauthorized { message }) => assert!(message.contains("does not verify")),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    // A failing provider is its own error, and nothing is sent.
    let failing = Client::builder(&server.url)
        .token_provider(|| async { Err::<String, _>(std::io::Error::other("no refresh token")) })
        .connect()
        .await;
    assert!(matches!(failing, Err(Error::Token(_))), "{failing:?}");
    assert_eq!(server.tokens.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn refused_credentials_show_as_unauthorized_and_are_retried_with_fresh_tokens() {
    let server = scripted(|n| match n {
        1 => Answer::WelcomeThenUnauthorized,
        2 => Answer::Refuse,
        _ => Answer::GatedWelcome,
    })
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let client = Client::builder(&server.url)
        .config(fast_config())
        .token_provider(counting_provider(calls.clone()))
        .connect()
        .await
        .unwrap();
    // Closed with 4003, then 401: unauthorized, and still retrying.
    wait_for_state(&client, |state| matches!(state, ConnectionState::Unauthorized { .. })).await;
    server.gate.notify_one();
    wait_for_state(
        &client,
        |state| matches!(state, ConnectionState::Connected { session, .. } if session == "s3"),
    )
    .await;
    let tokens = server.tokens.lock().unwrap().clone();
    let expected: Vec<_> = (1..=3).map(|n| Some(format!("Bearer t{n}"))).collect();
    assert_eq!(tokens, expected);
    client.close().await;
}

#[tokio::test]
async fn refusals_by_the_servers_rules_are_typed_and_never_re_run() {
    let server = scripted(|_| Answer::Welcome).await;
    let client = Client::connect_with(&server.url, fast_config()).await.unwrap();
    assert_eq!(client.identity().map(|identity| identity.sub), Some("alice".to_owned()));

    let refused = client.open("forbidden-doc").await;
    assert!(matches!(refused, Err(Error::Forbidden { .. })), "{refused:?}");

    let doc = client.open("rules").await.unwrap();
    let write = |path: &'static str| {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let pointer = Pointer::parse(path).unwrap();
        let transact = doc.transact(move |tx| -> TxResult<()> {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(tx.set(&pointer, json!(1))?)
        });
        (transact, runs)
    };
    let (transact, runs) = write("/forbidden");
    match transact.await {
        Err(TransactError::Forbidden { op_index: 0, pointer, message }) => {
            assert_eq!(pointer.to_string(), "/forbidden");
            assert!(message.contains("refused"));
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let (transact, runs) = write("/invalid");
    assert!(matches!(transact.await, Err(TransactError::Invalid { .. })));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let (transact, runs) = write("/vetoed");
    assert!(matches!(transact.await, Err(TransactError::Vetoed { .. })));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Each went to the server once, and the replica kept none of them.
    assert_eq!(*server.commits.lock().unwrap(), ["/forbidden", "/invalid", "/vetoed"]);
    assert_eq!(doc.value().await.unwrap(), json!({}));
    client.close().await;
}

/// Against the real server with HS256 JWT authentication.
mod real_server {
    use super::*;
    use concord_engine::access::Grants;
    use concord_server::auth::{self, JwtConfig, TokenRequest};
    use concord_server::{Config, RunningServer, ServerBuilder};

    const SECRET: &[u8] = b"a test secret of at least 32 bytes, for HS256";

    async fn start() -> RunningServer {
        let jwt = JwtConfig { hs256_secret: Some(SECRET.to_vec()), ..JwtConfig::default() };
        // A session without a token gets this long to send an `auth`
        // message before `unauthorized` and 4003.
        let handshake_timeout = Duration::from_millis(300);
        let config = Config { record_commit_log: true, handshake_timeout, ..Config::default() };
        ServerBuilder::new().jwt(jwt).config(config).bind("127.0.0.1:0").await.unwrap()
    }

    /// Alice may write `team/*` under `/mine` only, and nothing else.
    fn alice_token(ttl: Duration) -> String {
        let grants: Grants = serde_json::from_value(json!({
            "docs": [{"pattern": "team/*", "access": "write", "scopes": ["/mine"]}]
        }))
        .unwrap();
        let request = TokenRequest {
            sub: "alice".into(),
            name: Some("Alice".into()),
            grants,
            ttl,
            audience: None,
            issuer: None,
        };
        auth::mint_hs256(SECRET, &request).unwrap()
    }

    #[tokio::test]
    async fn a_token_provider_authenticates_and_the_servers_refusals_are_typed() {
        let server = start().await;
        // No token: upgraded, then `unauthorized` once no `auth` came.
        let refused = Client::connect_with(&server.ws_url(), fast_config()).await;
        assert!(matches!(refused, Err(Error::Unauthorized { .. })), "{refused:?}");
        // A token that does not verify: 401 on the upgrade.
        let forged = Client::builder(server.ws_url())
            .token_provider(|| async { Ok::<_, std::io::Error>("not.a.jwt".to_owned()) })
            .connect()
            .await;
        assert!(matches!(forged, Err(Error::Unauthorized { .. })), "{forged:?}");

        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let client = Client::builder(server.ws_url())
            .config(fast_config())
            .token_provider(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, std::io::Error>(alice_token(Duration::from_secs(600))) }
            })
            .connect()
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let alice = Identity { sub: "alice".into(), name: Some("Alice".into()) };
        assert_eq!(client.identity(), Some(alice));

        let denied = client.open("secret").await;
        assert!(matches!(denied, Err(Error::Forbidden { .. })), "{denied:?}");

        let doc = client.open("team/board").await.unwrap();
        let mine = Pointer::parse("/mine").unwrap();
        doc.transact(move |tx| -> TxResult<()> { Ok(tx.increment(&mine, 1)?) }).await.unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let theirs = Pointer::parse("/theirs").unwrap();
        let outside = doc
            .transact(move |tx| -> TxResult<()> {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(tx.set(&theirs, json!(1))?)
            })
            .await;
        match outside {
            Err(TransactError::Forbidden { op_index: 0, pointer, .. }) => {
                assert_eq!(pointer.to_string(), "/theirs");
            }
            other => panic!("expected Forbidden, got {other:?}"),
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(doc.value().await.unwrap(), json!({"mine": 1}));
        client.close().await;
        server.shutdown().await;
    }

    #[tokio::test]
    async fn an_expiring_token_is_replaced_by_reconnecting_with_a_fresh_one() {
        let server = start().await;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let client = Client::builder(server.ws_url())
            .config(fast_config())
            .token_provider(move || {
                // The first token expires within a second; the next last.
                let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
                let ttl = Duration::from_secs(if first { 1 } else { 600 });
                async move { Ok::<_, std::io::Error>(alice_token(ttl)) }
            })
            .connect()
            .await
            .unwrap();
        let ConnectionState::Connected { session: first, .. } = client.state() else {
            panic!("not connected: {:?}", client.state());
        };
        let doc = client.open("team/expiry").await.unwrap();
        // The server says token_expired; the client reconnects at once.
        wait_for_state(&client, |state| {
            matches!(state, ConnectionState::Connected { session, .. } if *session != first)
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The document resumed on the new session.
        let mine = Pointer::parse("/mine").unwrap();
        doc.transact(move |tx| -> TxResult<()> { Ok(tx.increment(&mine, 1)?) }).await.unwrap();
        assert_eq!(client.stats().connects, 2);
        client.close().await;
        server.shutdown().await;
    }

    #[tokio::test]
    async fn forbidden_subscriptions_publishes_and_registrations_fail_at_once_typed() {
        let server = start().await;
        let grants: Grants = serde_json::from_value(json!({
            "topics": [{"pattern": "chat.*", "allow": ["subscribe"]},
                       {"pattern": "chat.mine", "allow": ["publish"]}],
            "methods": [{"pattern": "me.*", "allow": ["register"]}],
        }))
        .unwrap();
        let request = TokenRequest {
            sub: "bob".into(),
            name: None,
            grants,
            ttl: Duration::from_secs(600),
            audience: None,
            issuer: None,
        };
        let token = auth::mint_hs256(SECRET, &request).unwrap();
        // Long acknowledgement timeouts: a refusal must answer, not a timeout.
        let config = ClientConfig { ack_timeout: Duration::from_secs(30), ..fast_config() };
        let client = Client::builder(server.ws_url())
            .config(config)
            .token_provider(move || {
                let token = token.clone();
                async move { Ok::<_, std::io::Error>(token) }
            })
            .connect()
            .await
            .unwrap();
        let forbidden = |result: &Result<(), Error>| {
            matches!(result, Err(Error::Refused { code: ErrorCode::Forbidden, .. }))
        };
        let subscribed = client.subscribe("news.>").await.map(|_| ());
        assert!(forbidden(&subscribed), "{subscribed:?}");
        let published = client.publish("chat.other", json!(1)).confirmed().await;
        assert!(forbidden(&published), "{published:?}");
        let registered = client.register("admin.reset", |_| async { Ok(json!(null)) }).await;
        assert!(forbidden(&registered), "{registered:?}");
        // What the token allows still works on the same session.
        let _subscription = client.subscribe("chat.room").await.unwrap();
        client.publish("chat.mine", json!(2)).confirmed().await.unwrap();
        client.register("me.ping", |_| async { Ok(json!("pong")) }).await.unwrap();
        client.close().await;
        server.shutdown().await;
    }
}
