//! Connection and subscription tokens: JSON Web Tokens signed by the application's backend
//! and verified here before a client may connect or join a private channel.
//!
//! The claims follow the Centrifugo conventions so that backends written for it keep working:
//!
//! * a **connection token** carries `sub` (the user id; empty means an anonymous user),
//!   optional `exp`, `iat`, `nbf`, `jti`, `aud`, `iss`, `info` (any JSON, shown to other
//!   clients in presence and join/leave events), `b64info`, `channels` (server-side
//!   subscriptions made at connect), `meta` (private to the server) and `expire_at`;
//! * a **subscription token** carries `sub` (must be the connecting user's id), `channel`
//!   (must be the channel being subscribed) and optional `exp`, `info`, `b64info`, ….
//!
//! Keys: an HMAC secret (`HS256`, `HS384`, `HS512`), an RSA public key (`RS*`, `PS*`) and an
//! ECDSA public key (`ES256` for P-256, `ES384` for P-384), in any combination. The `alg` in a
//! token's header picks the key; an algorithm with no configured key — and always `none` — is
//! rejected with [`TokenError::WrongAlgorithm`], so an attacker cannot downgrade to a weaker
//! scheme or sign with the RSA public key as an HMAC secret.
//!
//! Expiry is reported as [`TokenError::Expired`], distinct from every "invalid" error, because
//! the protocol answers it differently: an expired token makes the client SDK fetch a fresh
//! one and retry, while an invalid one is final.
//!
//! Time comes from a clock that tests can replace ([`TokenVerifier::with_clock`]). The leeway
//! for `exp` and `nbf` defaults to [`DEFAULT_LEEWAY`] (none), because the refresh flow relies
//! on the server noticing expiry on time; raise it if the backend's clock drifts.
//!
//! ```
//! use switchboard_server::auth::{sign_hs256, ConnectionClaims, TokenVerifier};
//!
//! let claims = ConnectionClaims::new("42").with_info(r#"{"name":"Ada"}"#).unwrap();
//! let token = sign_hs256(b"secret", &claims).unwrap();
//! let verifier = TokenVerifier::new().with_hmac_secret(b"secret");
//! let verified = verifier.verify_connection_token(&token).unwrap();
//! assert_eq!(verified.sub, "42");
//! assert_eq!(verified.info.unwrap().get(), r#"{"name":"Ada"}"#);
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// Leeway applied to `exp` and `nbf` unless configured otherwise: none.
pub const DEFAULT_LEEWAY: Duration = Duration::ZERO;

/// Token settings as they appear in the TOML configuration file.
///
/// Key names match Centrifugo's (`token_hmac_secret`, …); the dashed spellings are accepted
/// too. Public keys may be given inline (text starting with `-----BEGIN`) or as a path to a
/// PEM file.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenConfig {
    /// Shared secret for `HS256`/`HS384`/`HS512` tokens.
    #[serde(alias = "token-hmac-secret")]
    pub token_hmac_secret: Option<String>,
    /// RSA public key (PEM text or file path) for `RS*`/`PS*` tokens.
    #[serde(alias = "token-rsa-public-key")]
    pub token_rsa_public_key: Option<String>,
    /// ECDSA public key (PEM text or file path) for `ES256`/`ES384` tokens.
    #[serde(alias = "token-ecdsa-public-key")]
    pub token_ecdsa_public_key: Option<String>,
    /// When set, every token must carry this value in `aud`.
    #[serde(alias = "token-audience")]
    pub token_audience: Option<String>,
    /// When set, every token must carry this value in `iss`.
    #[serde(alias = "token-issuer")]
    pub token_issuer: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf` (default 0).
    #[serde(alias = "token-leeway")]
    pub token_leeway: u64,
    /// Whether a client may connect without a token (or with an empty `sub`) as an
    /// anonymous user. The verifier does not enforce this; the protocol layer does.
    #[serde(alias = "allow-anonymous")]
    pub allow_anonymous: bool,
}

impl fmt::Debug for TokenConfig {
    // Hand-written so the secret never lands in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field(
                "token_hmac_secret",
                &self.token_hmac_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("token_rsa_public_key", &self.token_rsa_public_key)
            .field("token_ecdsa_public_key", &self.token_ecdsa_public_key)
            .field("token_audience", &self.token_audience)
            .field("token_issuer", &self.token_issuer)
            .field("token_leeway", &self.token_leeway)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

impl TokenConfig {
    /// Whether any key is configured, i.e. whether tokens can be verified at all.
    pub fn has_keys(&self) -> bool {
        self.token_hmac_secret.is_some()
            || self.token_rsa_public_key.is_some()
            || self.token_ecdsa_public_key.is_some()
    }

    /// Builds the verifier, reading PEM files and parsing keys now so that a bad key is a
    /// startup error rather than a rejected client later.
    pub fn verifier(&self) -> Result<TokenVerifier, TokenConfigError> {
        let mut v = TokenVerifier::new().with_leeway(Duration::from_secs(self.token_leeway));
        if let Some(secret) = &self.token_hmac_secret {
            if secret.is_empty() {
                return Err(TokenConfigError::EmptySecret);
            }
            v = v.with_hmac_secret(secret.as_bytes());
        }
        if let Some(key) = &self.token_rsa_public_key {
            v = v.with_rsa_public_key_pem(&load_pem(key)?)?;
        }
        if let Some(key) = &self.token_ecdsa_public_key {
            v = v.with_ecdsa_public_key_pem(&load_pem(key)?)?;
        }
        if let Some(aud) = &self.token_audience {
            v = v.with_audience(aud.clone());
        }
        if let Some(iss) = &self.token_issuer {
            v = v.with_issuer(iss.clone());
        }
        Ok(v)
    }
}

/// Inline PEM text is recognised by its armour line; anything else is a file path.
fn load_pem(value: &str) -> Result<Vec<u8>, TokenConfigError> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    std::fs::read(value).map_err(|source| TokenConfigError::Io {
        path: PathBuf::from(value),
        source,
    })
}

/// A token configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    /// `token_hmac_secret` is set but empty, which would let anyone sign tokens.
    #[error("token_hmac_secret is empty")]
    EmptySecret,
    /// A PEM file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Io {
        /// The file named in the configuration.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// A public key could not be parsed.
    #[error("invalid {kind} public key: {reason}")]
    Key {
        /// `"RSA"` or `"ECDSA"`.
        kind: &'static str,
        /// The parser's explanation.
        reason: String,
    },
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT at all: wrong number of parts, bad base64, header not JSON, …
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names an algorithm that no configured key serves (or `none`).
    #[error("token algorithm {0:?} is not accepted")]
    WrongAlgorithm(String),
    /// The signature does not match the configured key.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token's `exp` has passed (beyond the leeway). The client should get a new one.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` is still in the future (beyond the leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// `aud` is missing or does not contain the configured audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// `iss` is missing or is not the configured issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// A subscription token's `channel` is not the channel being subscribed.
    #[error("subscription token is for channel {got:?}, not {expected:?}")]
    WrongChannel {
        /// The channel the client asked for.
        expected: String,
        /// The channel named in the token.
        got: String,
    },
    /// A subscription token's `sub` is not the connected user's id.
    #[error("subscription token was issued for another user")]
    WrongUser,
    /// A subscription token presented as a connection token (it has a `channel` claim).
    #[error("a subscription token cannot be used to connect")]
    WrongKind,
    /// The signature is good but a claim has the wrong type (e.g. `channels` not a list).
    #[error("invalid token claims: {0}")]
    InvalidClaims(String),
}

impl TokenError {
    /// Whether the client should refresh its token and try again (only [`TokenError::Expired`]).
    pub fn is_expired(&self) -> bool {
        matches!(self, TokenError::Expired)
    }
}

/// `aud` may be one string or a list of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences; the token is accepted if one of them is ours.
    Many(Vec<String>),
}

/// Claims of a connection token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectionClaims {
    /// User id; empty for an anonymous user.
    #[serde(default)]
    pub sub: String,
    /// Expiry, seconds since the Unix epoch; `None` means the token never expires.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub exp: Option<u64>,
    /// Issue time, seconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub iat: Option<u64>,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub nbf: Option<u64>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Intended audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Connection info, kept as the exact JSON text the backend signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    /// Connection info as base64 of arbitrary bytes (for binary protocols).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64info: Option<String>,
    /// Channels the server subscribes the connection to at connect.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub channels: Vec<String>,
    /// Server-side metadata, never sent to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<RawValue>>,
    /// When the connection itself expires (seconds since the epoch), independent of `exp`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub expire_at: Option<u64>,
}

impl ConnectionClaims {
    /// Claims for `user` with nothing else set.
    pub fn new(user: impl Into<String>) -> Self {
        ConnectionClaims {
            sub: user.into(),
            ..Default::default()
        }
    }

    /// Sets `iat` to now and `exp` to now + `ttl`.
    pub fn expires_in(mut self, ttl: Duration) -> Self {
        let now = unix_now();
        self.iat = Some(now);
        self.exp = Some(now.saturating_add(ttl.as_secs()));
        self
    }

    /// Sets `info` from JSON text, which must be valid JSON.
    pub fn with_info(mut self, json: &str) -> Result<Self, serde_json::Error> {
        self.info = Some(RawValue::from_string(json.to_owned())?);
        Ok(self)
    }
}

/// Claims of a subscription token for a private channel.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubscriptionClaims {
    /// The user id of the connection allowed to subscribe.
    #[serde(default)]
    pub sub: String,
    /// The channel this token grants.
    #[serde(default)]
    pub channel: String,
    /// Expiry, seconds since the Unix epoch; `None` means the token never expires.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub exp: Option<u64>,
    /// Issue time, seconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub iat: Option<u64>,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub nbf: Option<u64>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Intended audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Channel info for this subscriber (shown in presence), exact JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    /// Channel info as base64 of arbitrary bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64info: Option<String>,
    /// When the subscription itself expires (seconds since the epoch), independent of `exp`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub expire_at: Option<u64>,
}

impl SubscriptionClaims {
    /// Claims letting `user` subscribe to `channel`, with nothing else set.
    pub fn new(user: impl Into<String>, channel: impl Into<String>) -> Self {
        SubscriptionClaims {
            sub: user.into(),
            channel: channel.into(),
            ..Default::default()
        }
    }

    /// Sets `iat` to now and `exp` to now + `ttl`.
    pub fn expires_in(mut self, ttl: Duration) -> Self {
        let now = unix_now();
        self.iat = Some(now);
        self.exp = Some(now.saturating_add(ttl.as_secs()));
        self
    }

    /// Sets `info` from JSON text, which must be valid JSON.
    pub fn with_info(mut self, json: &str) -> Result<Self, serde_json::Error> {
        self.info = Some(RawValue::from_string(json.to_owned())?);
        Ok(self)
    }
}

/// The time claims every kind of token shares.
trait TimeClaims {
    fn exp(&self) -> Option<u64>;
    fn nbf(&self) -> Option<u64>;
}

impl TimeClaims for ConnectionClaims {
    fn exp(&self) -> Option<u64> {
        self.exp
    }
    fn nbf(&self) -> Option<u64> {
        self.nbf
    }
}

impl TimeClaims for SubscriptionClaims {
    fn exp(&self) -> Option<u64> {
        self.exp
    }
    fn nbf(&self) -> Option<u64> {
        self.nbf
    }
}

/// A JWT NumericDate: RFC 7519 allows fractions, and some libraries write them.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n: Option<serde_json::Number> = Option::deserialize(d)?;
    Ok(n.map(|n| {
        if let Some(u) = n.as_u64() {
            u
        } else {
            // Negative or fractional: floor, clamped at the epoch.
            n.as_f64().map_or(0, |f| f.max(0.0) as u64)
        }
    }))
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Seconds since the Unix epoch from the system clock.
pub fn unix_now() -> u64 {
    to_unix(SystemTime::now())
}

fn to_unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Verifies connection and subscription tokens against the configured keys.
///
/// Cheap to clone (keys are parsed once); share one per server.
#[derive(Clone)]
pub struct TokenVerifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: u64,
    clock: Clock,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ecdsa", &self.ecdsa.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl Default for TokenVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenVerifier {
    /// A verifier with no keys (it rejects every token) and the system clock; add keys with
    /// the `with_*` methods.
    pub fn new() -> Self {
        TokenVerifier {
            hmac: None,
            rsa: None,
            ecdsa: None,
            audience: None,
            issuer: None,
            leeway: DEFAULT_LEEWAY.as_secs(),
            clock: Arc::new(SystemTime::now),
        }
    }

    /// Accepts `HS256`/`HS384`/`HS512` tokens signed with `secret`.
    pub fn with_hmac_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.hmac = Some(DecodingKey::from_secret(secret.as_ref()));
        self
    }

    /// Accepts `RS*`/`PS*` tokens verified with this RSA public key (PEM, `PUBLIC KEY` or
    /// `RSA PUBLIC KEY`).
    pub fn with_rsa_public_key_pem(mut self, pem: &[u8]) -> Result<Self, TokenConfigError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| TokenConfigError::Key {
            kind: "RSA",
            reason: e.to_string(),
        })?;
        self.rsa = Some(key);
        Ok(self)
    }

    /// Accepts `ES256`/`ES384` tokens verified with this ECDSA public key (PEM `PUBLIC KEY`).
    pub fn with_ecdsa_public_key_pem(mut self, pem: &[u8]) -> Result<Self, TokenConfigError> {
        let key = DecodingKey::from_ec_pem(pem).map_err(|e| TokenConfigError::Key {
            kind: "ECDSA",
            reason: e.to_string(),
        })?;
        self.ecdsa = Some(key);
        Ok(self)
    }

    /// Requires `aud` to be (or contain) `audience`.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Requires `iss` to equal `issuer`.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Clock skew tolerated on `exp` and `nbf`, in whole seconds (default none).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.as_secs();
        self
    }

    /// Replaces the system clock, for tests and simulations.
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Whether at least one key is configured.
    pub fn has_keys(&self) -> bool {
        self.hmac.is_some() || self.rsa.is_some() || self.ecdsa.is_some()
    }

    /// Verifies a connection token and returns its claims.
    ///
    /// An empty `sub` is returned as is: whether anonymous users are allowed is the
    /// caller's policy ([`TokenConfig::allow_anonymous`]).
    pub fn verify_connection_token(&self, token: &str) -> Result<ConnectionClaims, TokenError> {
        let claims: ConnectionClaims = self.verify(token)?;
        // A subscription token is signed with the same key; refuse it here so a token
        // handed out for one channel never doubles as a login.
        if has_channel_claim(token) {
            return Err(TokenError::WrongKind);
        }
        Ok(claims)
    }

    /// Verifies a subscription token for `channel`, presented by a connection of `user`
    /// (the connection token's `sub`, empty for anonymous).
    pub fn verify_subscription_token(
        &self,
        token: &str,
        user: &str,
        channel: &str,
    ) -> Result<SubscriptionClaims, TokenError> {
        let claims: SubscriptionClaims = self.verify(token)?;
        if claims.channel != channel {
            return Err(TokenError::WrongChannel {
                expected: channel.to_owned(),
                got: claims.channel,
            });
        }
        if claims.sub != user {
            return Err(TokenError::WrongUser);
        }
        Ok(claims)
    }

    fn verify<T: DeserializeOwned + TimeClaims>(&self, token: &str) -> Result<T, TokenError> {
        let alg = header_algorithm(token)?;
        let key = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.rsa.as_ref(),
            Algorithm::ES256 | Algorithm::ES384 => self.ecdsa.as_ref(),
            Algorithm::EdDSA => None,
        }
        .ok_or_else(|| TokenError::WrongAlgorithm(format!("{alg:?}")))?;

        // Time checks are ours (injectable clock); the library checks signature, aud, iss.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        let claims = jsonwebtoken::decode::<T>(token, key, &validation)
            .map_err(map_error)?
            .claims;

        let now = to_unix((self.clock)());
        if let Some(exp) = claims.exp() {
            // RFC 7519: the token must not be accepted "on or after" exp.
            if now >= exp.saturating_add(self.leeway) {
                return Err(TokenError::Expired);
            }
        }
        if let Some(nbf) = claims.nbf() {
            if now.saturating_add(self.leeway) < nbf {
                return Err(TokenError::NotYetValid);
            }
        }
        Ok(claims)
    }
}

/// Reads the header's `alg` before anything else so that unknown algorithms, `none`
/// included, get a precise error instead of a generic parse failure.
fn header_algorithm(token: &str) -> Result<Algorithm, TokenError> {
    #[derive(Deserialize)]
    struct RawHeader {
        alg: String,
        #[serde(default)]
        crit: Option<IgnoredAny>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "a JWT has three dot-separated parts".into(),
        ));
    };
    // Checked up front so that garbage is "malformed" rather than a signature mismatch.
    let base64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !(base64url(payload) && base64url(signature)) {
        return Err(TokenError::Malformed("token is not base64url".into()));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed("header is not base64url".into()))?;
    let header: RawHeader = serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed("header is not a JSON object with alg".into()))?;
    // RFC 7515 §4.1.11: extensions marked critical that we do not implement must be refused.
    if header.crit.is_some() {
        return Err(TokenError::Malformed(
            "critical header extensions are not supported".into(),
        ));
    }
    Algorithm::from_str(&header.alg).map_err(|_| TokenError::WrongAlgorithm(header.alg))
}

/// Whether the (already verified) payload has a `channel` claim.
fn has_channel_claim(token: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        channel: Option<IgnoredAny>,
    }
    token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Probe>(&b).ok())
        .is_some_and(|p| p.channel.is_some())
}

fn map_error(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::WrongAlgorithm(e.to_string())
        }
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::WrongIssuer,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        // The header parsed already, so a JSON error is about the claims.
        ErrorKind::Json(err) => TokenError::InvalidClaims(err.to_string()),
        _ => TokenError::Malformed(e.to_string()),
    }
}

/// Signing failed (only possible if the claims cannot be serialized).
#[derive(Debug, thiserror::Error)]
#[error("cannot sign token: {0}")]
pub struct SignError(String);

/// Signs `claims` as an `HS256` JWT with `secret`: what a backend (or `switchboard token`)
/// does to mint connection and subscription tokens.
pub fn sign_hs256(secret: &[u8], claims: &impl Serialize) -> Result<String, SignError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| SignError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_dates_accept_fractions() {
        let c: ConnectionClaims =
            serde_json::from_str(r#"{"sub":"1","exp":1700000000.9,"iat":null}"#).unwrap();
        assert_eq!(c.exp, Some(1_700_000_000));
        assert_eq!(c.iat, None);
    }

    #[test]
    fn config_debug_hides_the_secret() {
        let c = TokenConfig {
            token_hmac_secret: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn header_alg_none_is_wrong_algorithm() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let p = URL_SAFE_NO_PAD.encode(br#"{"sub":"1"}"#);
        assert_eq!(
            header_algorithm(&format!("{h}.{p}.")),
            Err(TokenError::WrongAlgorithm("none".into()))
        );
    }
}
