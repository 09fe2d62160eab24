//! The `auth` message and token verification never panic, whatever arrives:
//! raw bytes as a frame, as a token, and (to get past the signature to the
//! claims and the permissions they carry) arbitrary JSON claims signed with
//! the server's own secret. A token that verifies always carries a valid
//! permissions claim and the subject it was signed for.

#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::LazyLock;

use concord_engine::access::Permissions;
use concord_engine::protocol::ClientMessage;
use concord_server::auth::{JwtAuthenticator, JwtConfig};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SECRET: &[u8] = b"the fuzz target's secret, 32 bytes or more";

static VERIFIER: LazyLock<JwtAuthenticator> = LazyLock::new(|| {
    let config = JwtConfig { hs256_secret: Some(SECRET.to_vec()), ..JwtConfig::default() };
    JwtAuthenticator::new(config).unwrap()
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // As a frame: an auth message's token goes to the verifier.
    if let Ok(ClientMessage::Auth { token }) = ClientMessage::decode(text, 80) {
        let _ = VERIFIER.verify(&token);
    }
    // As a token.
    let _ = VERIFIER.verify(text);
    // As claims, properly signed.
    if let Ok(claims) = serde_json::from_str::<Value>(text) {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
        let Ok(token) = jsonwebtoken::encode(&header, &claims, &key) else { return };
        if let Ok(identity) = VERIFIER.verify(&token) {
            assert_eq!(Some(identity.sub.as_str()), claims["sub"].as_str());
            let claim = claims.get("concord").cloned().unwrap_or(Value::Null);
            assert!(Permissions::from_claim(&claim, &identity.sub).is_ok());
        }
    }
});
