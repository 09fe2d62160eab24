//! Authentication: who a session (or an HTTP request) is.
//!
//! An [`Authenticator`] turns a bearer token into an [`Identity`] (subject,
//! name, permissions, expiry) or a refusal. [`JwtAuthenticator`] is the
//! built-in one: JWTs signed with HS256 (a shared secret) or RS256/EdDSA
//! (public keys from a JWKS file, re-read when it changes or on
//! [`JwtAuthenticator::reload`], e.g. on SIGHUP). Embedders may supply their
//! own to check tokens against their user database.
//!
//! Failed authentications are counted per remote address
//! ([`AuthFailures`]): past `AUTH_FAILURES_PER_MINUTE_MAX` in a minute, an
//! address is refused without the token being looked at until the minute is
//! over. Nothing here logs a token.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_engine::access::{Grants, Identity, Permissions};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest token accepted, in bytes. Longer ones are refused unread.
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;
/// Failed authentications one remote address may make per minute; past it
/// the address is refused (`rate_limited`) until the minute is over.
pub const AUTH_FAILURES_PER_MINUTE_MAX: u32 = 20;
/// Most remote addresses whose failures are counted at once; when full, the
/// counts of the oldest minute are dropped first.
pub const AUTH_FAILURE_ADDRESSES_MAX: usize = 10_000;
/// Default clock leeway for `exp` and `nbf`.
pub const JWT_LEEWAY: Duration = Duration::from_secs(10);
/// Largest JWKS file read, in bytes.
pub const JWKS_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// What a token is presented with.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// The bearer token.
    pub token: String,
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The `Origin` header of the request, when it had one (browsers).
    pub origin: Option<String>,
}

/// Why a token was refused. The message reaches the client; it never
/// contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    /// The token was valid but has expired.
    #[error("the token expired")]
    Expired,
    /// Anything else: malformed, bad signature, wrong audience or issuer,
    /// unknown key, not yet valid, bad permissions claim...
    #[error("{0}")]
    Invalid(String),
}

impl AuthRefusal {
    /// A short metrics label and log field.
    pub fn label(&self) -> &'static str {
        match self {
            AuthRefusal::Expired => "expired",
            AuthRefusal::Invalid(_) => "invalid",
        }
    }
}

/// The future an [`Authenticator`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Identity, AuthRefusal>> + Send + 'a>>;

/// Turns a bearer token into an identity. Called once per session (and per
/// authenticated HTTP request); a slow authenticator delays only the
/// session it authenticates, within the handshake timeout.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a>;

    /// Re-reads key material (the JWKS file), if the authenticator has any.
    fn reload(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Why an authenticator could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is over {JWKS_FILE_BYTES_MAX} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is not a JWKS (a JSON object with \"keys\"): {reason}")]
    BadJwks { path: PathBuf, reason: String },
    #[error("the HS256 secret in {path} is shorter than 32 bytes")]
    ShortSecret { path: PathBuf },
    #[error("no key configured: give an HS256 secret, a JWKS file, or both")]
    NoKeys,
}

/// How [`JwtAuthenticator`] verifies tokens.
#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    /// The HS256 shared secret (at least 32 bytes).
    pub hs256_secret: Option<Vec<u8>>,
    /// A JWKS file of RS256 and EdDSA public keys.
    pub jwks_file: Option<PathBuf>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// Clock leeway for `exp` and `nbf`; `None` is [`JWT_LEEWAY`].
    pub leeway: Option<Duration>,
}

impl JwtConfig {
    /// Reads an HS256 secret from a file (trailing newlines trimmed).
    pub fn read_secret(path: &Path) -> Result<Vec<u8>, AuthSetupError> {
        let read = std::fs::read(path)
            .map_err(|source| AuthSetupError::Read { path: path.to_owned(), source })?;
        let trimmed = read.trim_ascii_end().to_vec();
        if trimmed.len() < 32 {
            return Err(AuthSetupError::ShortSecret { path: path.to_owned() });
        }
        Ok(trimmed)
    }
}

/// The claims Concord reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The permissions (`concord_engine::access`'s claim format).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub concord: Value,
}

/// The JWKS file's keys and what the file looked like when read.
#[derive(Debug)]
struct LoadedKeys {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    stamp: Option<(SystemTime, u64)>,
}

/// Verifies JWTs: HS256 with a shared secret, RS256 and EdDSA with public
/// keys from a JWKS file. The algorithm must match the kind of key that
/// verifies it (a token's `alg` picks the key source, and `none` is not an
/// algorithm here), so an HMAC token can never be checked against a public
/// key.
pub struct JwtAuthenticator {
    config: JwtConfig,
    secret: Option<DecodingKey>,
    jwks: RwLock<LoadedKeys>,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("hs256", &self.secret.is_some())
            .field("jwks_file", &self.config.jwks_file)
            .field("audience", &self.config.audience)
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    pub fn new(config: JwtConfig) -> Result<Self, AuthSetupError> {
        if config.hs256_secret.is_none() && config.jwks_file.is_none() {
            return Err(AuthSetupError::NoKeys);
        }
        let secret = config.hs256_secret.as_deref().map(DecodingKey::from_secret);
        let jwks = match &config.jwks_file {
            Some(path) => load_jwks(path)?,
            None => LoadedKeys { keys: Vec::new(), stamp: None },
        };
        Ok(Self { config, secret, jwks: RwLock::new(jwks) })
    }

    /// Verifies `token` now.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthRefusal> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(AuthRefusal::Invalid(format!(
                "the token is {} bytes, over the limit of {TOKEN_BYTES_MAX}",
                token.len()
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| AuthRefusal::Invalid(format!("malformed token: {error}")))?;
        self.refresh_jwks_if_changed();
        let key = match header.alg {
            Algorithm::HS256 => self.secret.clone().ok_or_else(|| {
                AuthRefusal::Invalid("HS256 tokens are not accepted by this server".into())
            })?,
            Algorithm::RS256 | Algorithm::EdDSA => {
                self.public_key(header.alg, header.kid.as_deref())?
            }
            other => {
                return Err(AuthRefusal::Invalid(format!(
                    "algorithm {other:?} is not accepted (HS256, RS256 or EdDSA)"
                )))
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway.unwrap_or(JWT_LEEWAY).as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.config.issuer {
            validation.set_issuer(&[issuer]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            match error.kind() {
                ErrorKind::ExpiredSignature => AuthRefusal::Expired,
                ErrorKind::InvalidSignature => AuthRefusal::Invalid("bad signature".into()),
                ErrorKind::ImmatureSignature => {
                    AuthRefusal::Invalid("the token is not valid yet (nbf)".into())
                }
                ErrorKind::InvalidAudience => AuthRefusal::Invalid("wrong audience (aud)".into()),
                ErrorKind::InvalidIssuer => AuthRefusal::Invalid("wrong issuer (iss)".into()),
                ErrorKind::MissingRequiredClaim(claim) => {
                    AuthRefusal::Invalid(format!("the token has no {claim:?} claim"))
                }
                _ => AuthRefusal::Invalid(format!("invalid token: {error}")),
            }
        })?;
        identity_of(data.claims)
    }

    fn public_key(&self, alg: Algorithm, kid: Option<&str>) -> Result<DecodingKey, AuthRefusal> {
        let loaded = self.jwks.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut candidates = loaded.keys.iter().filter(|(key_id, key_alg, _)| {
            *key_alg == alg && (kid.is_none() || key_id.as_deref() == kid)
        });
        let found = candidates.next().map(|(_, _, key)| key.clone());
        match (found, kid, candidates.next()) {
            (Some(key), Some(_), _) | (Some(key), None, None) => Ok(key),
            (Some(_), None, Some(_)) => Err(AuthRefusal::Invalid(format!(
                "the token names no key (kid) and several {alg:?} keys are configured"
            ))),
            (None, Some(kid), _) => {
                Err(AuthRefusal::Invalid(format!("no {alg:?} key with kid {kid:?} is configured")))
            }
            (None, None, _) => Err(AuthRefusal::Invalid(format!("no {alg:?} key is configured"))),
        }
    }

    /// Re-reads the JWKS file if its size or modification time changed. A
    /// file that fails to load (e.g. caught mid-write) keeps the old keys.
    fn refresh_jwks_if_changed(&self) {
        let Some(path) = &self.config.jwks_file else { return };
        let stamp = file_stamp(path);
        let current = self.jwks.read().unwrap_or_else(|poisoned| poisoned.into_inner()).stamp;
        if stamp.is_some() && stamp != current {
            if let Err(error) = self.reload_jwks() {
                tracing::warn!(%error, "JWKS file changed but could not be loaded; keeping the old keys");
            }
        }
    }

    fn reload_jwks(&self) -> Result<(), AuthSetupError> {
        let Some(path) = &self.config.jwks_file else { return Ok(()) };
        let loaded = load_jwks(path)?;
        let count = loaded.keys.len();
        *self.jwks.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
        tracing::info!(path = %path.display(), keys = count, "JWKS loaded");
        Ok(())
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a> {
        Box::pin(std::future::ready(self.verify(&request.token)))
    }

    fn reload(&self) -> Result<(), String> {
        self.reload_jwks().map_err(|error| error.to_string())
    }
}

/// The identity a verified token's claims describe.
pub fn identity_of(claims: Claims) -> Result<Identity, AuthRefusal> {
    let permissions = Permissions::from_claim(&claims.concord, &claims.sub)
        .map_err(|error| AuthRefusal::Invalid(format!("the concord claim: {error}")))?;
    Ok(Identity { sub: claims.sub, name: claims.name, permissions, expires_at: Some(claims.exp) })
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

fn load_jwks(path: &Path) -> Result<LoadedKeys, AuthSetupError> {
    let stamp = file_stamp(path);
    if stamp.is_some_and(|(_, len)| len > JWKS_FILE_BYTES_MAX) {
        return Err(AuthSetupError::TooLarge { path: path.to_owned() });
    }
    let text = std::fs::read_to_string(path)
        .map_err(|source| AuthSetupError::Read { path: path.to_owned(), source })?;
    let bad = |reason: String| AuthSetupError::BadJwks { path: path.to_owned(), reason };
    let set: JwkSet = serde_json::from_str(&text).map_err(|error| bad(error.to_string()))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            // HMAC secrets and EC keys are not taken from a JWKS here: a
            // public key file holds public keys.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|error| bad(error.to_string()))?;
        keys.push((jwk.common.key_id.clone(), alg, key));
    }
    Ok(LoadedKeys { keys, stamp })
}

/// Counts failed authentications per remote address, one minute at a time.
#[derive(Debug, Default)]
pub(crate) struct AuthFailures {
    counts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

const FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl AuthFailures {
    /// Whether `addr` is over its failures for this minute.
    pub(crate) fn blocked(&self, addr: IpAddr, now: Instant) -> bool {
        let counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.get(&addr).is_some_and(|(started, failures)| {
            now.duration_since(*started) < FAILURE_WINDOW
                && *failures >= AUTH_FAILURES_PER_MINUTE_MAX
        })
    }

    /// Records a failure of `addr`.
    pub(crate) fn record(&self, addr: IpAddr, now: Instant) {
        let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if counts.len() >= AUTH_FAILURE_ADDRESSES_MAX && !counts.contains_key(&addr) {
            counts.retain(|_, (started, _)| now.duration_since(*started) < FAILURE_WINDOW);
            if counts.len() >= AUTH_FAILURE_ADDRESSES_MAX {
                counts.clear();
            }
        }
        let entry = counts.entry(addr).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// A proxy (an address, or a network in CIDR form) whose
/// `X-Forwarded-For` the server believes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy {
    network: IpAddr,
    prefix_bits: u8,
}

impl TrustedProxy {
    /// Parses `10.0.0.5`, `10.0.0.0/8`, `::1` or `fd00::/8`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bad = || format!("{raw:?} is not an IP address or network (10.0.0.0/8, fd00::/8)");
        let (addr, bits) = match raw.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits.parse::<u8>().map_err(|_| bad())?)),
            None => (raw, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix_bits = bits.unwrap_or(width);
        if prefix_bits > width {
            return Err(bad());
        }
        Ok(Self { network, prefix_bits })
    }

    /// Whether `addr` is in this network.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let (network, addr, width) = match (self.network, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u128::from(n.to_bits()), u128::from(a.to_bits()), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => (n.to_bits(), a.to_bits(), 128),
            _ => return false,
        };
        let host_bits = width - u32::from(self.prefix_bits);
        network.checked_shr(host_bits).unwrap_or(0) == addr.checked_shr(host_bits).unwrap_or(0)
    }
}

/// The address a request comes from: the peer's, unless the peer is a
/// trusted proxy; then the nearest address in `X-Forwarded-For` (read from
/// the right, past every trusted proxy) that is not a trusted proxy. An
/// entry that does not parse stops the walk at the proxy that added it.
pub fn client_addr<'a>(
    peer: SocketAddr,
    trusted: &[TrustedProxy],
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
) -> IpAddr {
    let is_trusted = |addr: IpAddr| trusted.iter().any(|proxy| proxy.contains(addr));
    let mut client = peer.ip();
    if !is_trusted(client) {
        return client;
    }
    for entry in forwarded_for.rev().flat_map(|value| value.rsplit(',')) {
        match entry.trim().parse::<IpAddr>() {
            Ok(addr) => {
                client = addr;
                if !is_trusted(addr) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// What `concord token` (and the demo token endpoint) signs.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub sub: String,
    pub name: Option<String>,
    pub grants: Grants,
    pub ttl: Duration,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// Mints an HS256 token for `request`, valid from now for its `ttl`.
pub fn mint_hs256(secret: &[u8], request: &TokenRequest) -> Result<String, String> {
    let now = unix_now();
    let claims = Claims {
        sub: request.sub.clone(),
        name: request.name.clone(),
        exp: now.saturating_add(request.ttl.as_secs()),
        nbf: None,
        iat: Some(now),
        aud: request.audience.clone(),
        iss: request.issuer.clone(),
        concord: serde_json::to_value(&request.grants).map_err(|error| error.to_string())?,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> Vec<TrustedProxy> {
        list.iter().map(|raw| TrustedProxy::parse(raw).unwrap()).collect()
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let net = TrustedProxy::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.200.1.2")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::ffff:10.0.0.1")), "families do not mix");
        let one = TrustedProxy::parse("192.168.1.5").unwrap();
        assert!(one.contains(ip("192.168.1.5")) && !one.contains(ip("192.168.1.6")));
        let v6 = TrustedProxy::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(TrustedProxy::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129", ""] {
            assert!(TrustedProxy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_forwarded_address() {
        let peer = |raw: &str| SocketAddr::new(ip(raw), 1234);
        let trusted = proxies(&["10.0.0.0/8"]);
        // An untrusted peer's header is ignored: anyone can write one.
        assert_eq!(client_addr(peer("1.2.3.4"), &trusted, ["9.9.9.9"].into_iter()), ip("1.2.3.4"));
        // Behind one proxy.
        assert_eq!(client_addr(peer("10.0.0.1"), &trusted, ["5.6.7.8"].into_iter()), ip("5.6.7.8"));
        // A client-supplied entry on the left does not win: the walk stops
        // at the first address the trusted proxies did not vouch past.
        let chain = ["6.6.6.6, 5.6.7.8, 10.0.0.2"];
        assert_eq!(client_addr(peer("10.0.0.1"), &trusted, chain.into_iter()), ip("5.6.7.8"));
        // Several headers read as one list, in order.
        let headers = ["6.6.6.6", "5.6.7.8", "10.0.0.2"];
        assert_eq!(client_addr(peer("10.0.0.1"), &trusted, headers.into_iter()), ip("5.6.7.8"));
        // Garbage stops at the proxy that passed it on.
        let garbage = ["evil, 10.0.0.3"];
        assert_eq!(client_addr(peer("10.0.0.1"), &trusted, garbage.into_iter()), ip("10.0.0.3"));
        // No header: the proxy itself.
        assert_eq!(client_addr(peer("10.0.0.1"), &trusted, [].into_iter()), ip("10.0.0.1"));
    }
}
