//! Connection and subscription token verification: algorithms, keys, expiry, claims and
//! every rejection path of `switchboard_server::auth`.
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use switchboard_server::auth::{
    sign_hs256, ConnectionClaims, SubscriptionClaims, TokenConfig, TokenConfigError, TokenError,
    TokenVerifier,
};

const SECRET: &[u8] = b"a-secret-for-tests-only";
const NOW: u64 = 1_700_000_000;

/// A verifier whose clock reads `NOW`.
fn hmac_verifier() -> TokenVerifier {
    TokenVerifier::new()
        .with_hmac_secret(SECRET)
        .with_clock(|| at(NOW))
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn hs(alg: Algorithm, claims: &Value) -> String {
    encode(&Header::new(alg), claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

/// A token with arbitrary header and payload JSON and a given signature part.
fn raw_token(header: &str, payload: &str, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        signature
    )
}

#[test]
fn valid_hs256_connection_token_with_all_claims() {
    let token = hs(
        Algorithm::HS256,
        &json!({
            "sub": "42",
            "exp": NOW + 60,
            "iat": NOW,
            "jti": "t-1",
            "info": {"name": "Ada", "roles": ["admin"]},
            "b64info": "AAEC",
            "channels": ["news", "chat:lobby"],
            "meta": {"plan": "pro"},
            "expire_at": NOW + 3600
        }),
    );
    let c = hmac_verifier().verify_connection_token(&token).unwrap();
    assert_eq!(c.sub, "42");
    assert_eq!(c.exp, Some(NOW + 60));
    assert_eq!(c.iat, Some(NOW));
    assert_eq!(c.jti.as_deref(), Some("t-1"));
    assert_eq!(c.b64info.as_deref(), Some("AAEC"));
    assert_eq!(c.channels, vec!["news", "chat:lobby"]);
    assert_eq!(c.expire_at, Some(NOW + 3600));
    let info: Value = serde_json::from_str(c.info.unwrap().get()).unwrap();
    assert_eq!(info, json!({"name": "Ada", "roles": ["admin"]}));
    let meta: Value = serde_json::from_str(c.meta.unwrap().get()).unwrap();
    assert_eq!(meta, json!({"plan": "pro"}));
}

#[test]
fn info_is_kept_as_the_exact_signed_text() {
    // Key order and spacing survive: the info is forwarded to other clients verbatim.
    let payload = r#"{"sub":"1","info":{"z": 1,"a":[true, null]}}"#;
    let token = jsonwebtoken::crypto::sign(
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
        .as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .map(|sig| {
        format!(
            "{}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    })
    .unwrap();
    let c = hmac_verifier().verify_connection_token(&token).unwrap();
    assert_eq!(c.info.unwrap().get(), r#"{"z": 1,"a":[true, null]}"#);
}

#[test]
fn minimal_token_has_defaults_and_anonymous_sub_is_returned() {
    let c = hmac_verifier()
        .verify_connection_token(&hs(Algorithm::HS256, &json!({})))
        .unwrap();
    assert_eq!(c.sub, "");
    assert!(c.exp.is_none() && c.info.is_none() && c.channels.is_empty());
    let c = hmac_verifier()
        .verify_connection_token(&hs(Algorithm::HS256, &json!({"sub": "", "channels": null})))
        .unwrap();
    assert_eq!(c.sub, "");
    assert!(c.channels.is_empty());
}

#[test]
fn hs384_and_hs512_are_accepted() {
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let c = hmac_verifier()
            .verify_connection_token(&hs(alg, &json!({"sub": "7"})))
            .unwrap();
        assert_eq!(c.sub, "7", "{alg:?}");
    }
}

#[test]
fn sign_hs256_round_trips() {
    let claims = ConnectionClaims {
        channels: vec!["a".into()],
        ..ConnectionClaims::new("u1")
    }
    .with_info(r#"{"n":1}"#)
    .unwrap()
    .expires_in(Duration::from_secs(600));
    let token = sign_hs256(SECRET, &claims).unwrap();
    let got = TokenVerifier::new()
        .with_hmac_secret(SECRET)
        .verify_connection_token(&token)
        .unwrap();
    assert_eq!(got.sub, "u1");
    assert_eq!(got.channels, vec!["a"]);
    assert_eq!(got.info.unwrap().get(), r#"{"n":1}"#);
    assert_eq!(got.exp.unwrap() - got.iat.unwrap(), 600);
}

#[test]
fn wrong_secret_is_bad_signature() {
    let token = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "1"}),
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    assert_eq!(
        hmac_verifier().verify_connection_token(&token).unwrap_err(),
        TokenError::BadSignature
    );
}

#[test]
fn tampered_payload_is_bad_signature() {
    let token = hs(Algorithm::HS256, &json!({"sub": "1"}));
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(r#"{"sub":"admin"}"#),
        parts[2]
    );
    assert_eq!(
        hmac_verifier()
            .verify_connection_token(&forged)
            .unwrap_err(),
        TokenError::BadSignature
    );
}

#[test]
fn expiry_is_distinct_from_invalid() {
    let v = hmac_verifier();
    let expired = hs(Algorithm::HS256, &json!({"sub": "1", "exp": NOW - 1}));
    let err = v.verify_connection_token(&expired).unwrap_err();
    assert_eq!(err, TokenError::Expired);
    assert!(err.is_expired());
    // RFC 7519: not accepted on or after exp.
    let at_exp = hs(Algorithm::HS256, &json!({"sub": "1", "exp": NOW}));
    assert_eq!(
        v.verify_connection_token(&at_exp).unwrap_err(),
        TokenError::Expired
    );
    let live = hs(Algorithm::HS256, &json!({"sub": "1", "exp": NOW + 1}));
    assert_eq!(v.verify_connection_token(&live).unwrap().sub, "1");
    // A bad signature on an expired token is reported as invalid, not expired: the SDK
    // must not loop on refresh for a forged token.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "1", "exp": NOW - 1}),
        &EncodingKey::from_secret(b"nope"),
    )
    .unwrap();
    assert_eq!(
        v.verify_connection_token(&forged).unwrap_err(),
        TokenError::BadSignature
    );
}

#[test]
fn leeway_accepts_recently_expired_tokens() {
    let token = hs(Algorithm::HS256, &json!({"sub": "1", "exp": NOW - 3}));
    assert_eq!(
        hmac_verifier().verify_connection_token(&token).unwrap_err(),
        TokenError::Expired
    );
    let lenient = hmac_verifier().with_leeway(Duration::from_secs(5));
    assert_eq!(lenient.verify_connection_token(&token).unwrap().sub, "1");
    let too_old = hs(Algorithm::HS256, &json!({"sub": "1", "exp": NOW - 5}));
    assert_eq!(
        lenient.verify_connection_token(&too_old).unwrap_err(),
        TokenError::Expired
    );
}

#[test]
fn the_clock_is_consulted_on_every_verification() {
    let now = Arc::new(AtomicU64::new(NOW));
    let clock = now.clone();
    let v = TokenVerifier::new()
        .with_hmac_secret(SECRET)
        .with_clock(move || at(clock.load(Ordering::SeqCst)));
    let token = hs(Algorithm::HS256, &json!({"sub": "1", "exp": NOW + 30}));
    assert!(v.verify_connection_token(&token).is_ok());
    now.store(NOW + 30, Ordering::SeqCst);
    assert_eq!(
        v.verify_connection_token(&token).unwrap_err(),
        TokenError::Expired
    );
}

#[test]
fn not_before_in_the_future_is_refused() {
    let token = hs(Algorithm::HS256, &json!({"sub": "1", "nbf": NOW + 10}));
    assert_eq!(
        hmac_verifier().verify_connection_token(&token).unwrap_err(),
        TokenError::NotYetValid
    );
    let v = hmac_verifier().with_leeway(Duration::from_secs(10));
    assert!(v.verify_connection_token(&token).is_ok());
}

#[test]
fn fractional_exp_is_accepted() {
    let token = hs(
        Algorithm::HS256,
        &json!({"sub": "1", "exp": (NOW + 10) as f64 + 0.5}),
    );
    let c = hmac_verifier().verify_connection_token(&token).unwrap();
    assert_eq!(c.exp, Some(NOW + 10));
}

#[test]
fn alg_none_is_always_rejected() {
    let v = hmac_verifier();
    let unsigned = raw_token(r#"{"alg":"none","typ":"JWT"}"#, r#"{"sub":"admin"}"#, "");
    assert_eq!(
        v.verify_connection_token(&unsigned).unwrap_err(),
        TokenError::WrongAlgorithm("none".into())
    );
    // Same with a signature part present, and with other spellings.
    for alg in ["none", "None", "NONE", "hs256", ""] {
        let t = raw_token(
            &format!(r#"{{"alg":"{alg}"}}"#),
            r#"{"sub":"admin"}"#,
            "c2ln",
        );
        assert_eq!(
            v.verify_connection_token(&t).unwrap_err(),
            TokenError::WrongAlgorithm(alg.into()),
            "alg {alg:?}"
        );
    }
}

#[test]
fn algorithm_without_a_configured_key_is_rejected() {
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let es = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "1"}),
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        hmac_verifier().verify_connection_token(&es).unwrap_err(),
        TokenError::WrongAlgorithm("ES256".into())
    );
    // The classic confusion attack: HMAC-sign with the public key as the secret, against a
    // verifier that only has the public key.
    let public = ec.public_key_pem();
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "admin"}),
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    let v = TokenVerifier::new()
        .with_ecdsa_public_key_pem(public.as_bytes())
        .unwrap();
    assert_eq!(
        v.verify_connection_token(&confused).unwrap_err(),
        TokenError::WrongAlgorithm("HS256".into())
    );
    // No keys at all: nothing verifies.
    assert!(matches!(
        TokenVerifier::new().verify_connection_token(&hs(Algorithm::HS256, &json!({}))),
        Err(TokenError::WrongAlgorithm(_))
    ));
}

#[test]
fn es256_and_es384_with_generated_keys() {
    for (curve, alg) in [
        (&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256),
        (&rcgen::PKCS_ECDSA_P384_SHA384, Algorithm::ES384),
    ] {
        let pair = rcgen::KeyPair::generate_for(curve).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let token = encode(
            &Header::new(alg),
            &json!({"sub": "ec", "exp": NOW + 5}),
            &key,
        )
        .unwrap();
        let v = TokenVerifier::new()
            .with_ecdsa_public_key_pem(pair.public_key_pem().as_bytes())
            .unwrap()
            .with_clock(|| at(NOW));
        assert_eq!(
            v.verify_connection_token(&token).unwrap().sub,
            "ec",
            "{alg:?}"
        );

        // The same token against another key pair of the same curve fails.
        let other = rcgen::KeyPair::generate_for(curve).unwrap();
        let v = TokenVerifier::new()
            .with_ecdsa_public_key_pem(other.public_key_pem().as_bytes())
            .unwrap()
            .with_clock(|| at(NOW));
        assert_eq!(
            v.verify_connection_token(&token).unwrap_err(),
            TokenError::BadSignature,
            "{alg:?}"
        );
    }
}

/// Runs `openssl` with `args`; `None` if it is not installed or fails.
fn openssl(args: &[&str]) -> Option<Vec<u8>> {
    let out = Command::new("openssl").args(args).output().ok()?;
    out.status.success().then_some(out.stdout)
}

/// A fresh RSA key pair as (private PKCS#8 PEM, public SPKI PEM), made by `openssl`.
fn rsa_pair(dir: &std::path::Path, name: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let key = dir.join(format!("{name}.pem"));
    let key = key.to_str()?;
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key,
    ])?;
    let public = openssl(&["pkey", "-in", key, "-pubout"])?;
    Some((std::fs::read(key).ok()?, public))
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-auth-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn rs256_and_ps256_with_openssl_keys() {
    let dir = scratch_dir("rsa");
    let (Some((private, public)), Some((_, other_public))) =
        (rsa_pair(&dir, "a"), rsa_pair(&dir, "b"))
    else {
        eprintln!("note: openssl not available; RSA tests skipped");
        return;
    };
    let key = EncodingKey::from_rsa_pem(&private).unwrap();
    let v = TokenVerifier::new()
        .with_rsa_public_key_pem(&public)
        .unwrap()
        .with_clock(|| at(NOW));
    let wrong = TokenVerifier::new()
        .with_rsa_public_key_pem(&other_public)
        .unwrap()
        .with_clock(|| at(NOW));
    for alg in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS256] {
        let token = encode(
            &Header::new(alg),
            &json!({"sub": "rsa", "channels": ["x"]}),
            &key,
        )
        .unwrap();
        let c = v.verify_connection_token(&token).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.channels.as_slice()),
            ("rsa", &["x".to_string()][..])
        );
        assert_eq!(
            wrong.verify_connection_token(&token).unwrap_err(),
            TokenError::BadSignature,
            "{alg:?}"
        );
    }

    // The same key through the TOML configuration, once as a path and once inline.
    let path = dir.join("a.pub.pem");
    std::fs::write(&path, &public).unwrap();
    let token = encode(&Header::new(Algorithm::RS256), &json!({"sub": "cfg"}), &key).unwrap();
    for value in [
        path.to_str().unwrap().to_owned(),
        String::from_utf8(public.clone()).unwrap(),
    ] {
        let config = TokenConfig {
            token_rsa_public_key: Some(value),
            ..Default::default()
        };
        let v = config.verifier().unwrap();
        assert_eq!(v.verify_connection_token(&token).unwrap().sub, "cfg");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn subscription_token_checks_channel_and_user() {
    let v = hmac_verifier();
    let token = hs(
        Algorithm::HS256,
        &json!({"sub": "42", "channel": "private:room", "exp": NOW + 10, "info": {"role": "mod"}}),
    );
    let c = v
        .verify_subscription_token(&token, "42", "private:room")
        .unwrap();
    assert_eq!(c.channel, "private:room");
    assert_eq!(c.sub, "42");
    assert_eq!(c.info.unwrap().get(), r#"{"role":"mod"}"#);

    assert_eq!(
        v.verify_subscription_token(&token, "42", "private:other")
            .unwrap_err(),
        TokenError::WrongChannel {
            expected: "private:other".into(),
            got: "private:room".into()
        }
    );
    assert_eq!(
        v.verify_subscription_token(&token, "43", "private:room")
            .unwrap_err(),
        TokenError::WrongUser
    );
    assert_eq!(
        v.verify_subscription_token(&token, "", "private:room")
            .unwrap_err(),
        TokenError::WrongUser
    );

    // Expiry applies to subscription tokens too.
    let expired = hs(
        Algorithm::HS256,
        &json!({"sub": "42", "channel": "private:room", "exp": NOW}),
    );
    assert_eq!(
        v.verify_subscription_token(&expired, "42", "private:room")
            .unwrap_err(),
        TokenError::Expired
    );
}

#[test]
fn tokens_of_one_kind_do_not_pass_as_the_other() {
    let v = hmac_verifier();
    let connection = hs(Algorithm::HS256, &json!({"sub": "42"}));
    assert!(matches!(
        v.verify_subscription_token(&connection, "42", "private:room"),
        Err(TokenError::WrongChannel { got, .. }) if got.is_empty()
    ));
    let subscription = sign_hs256(SECRET, &SubscriptionClaims::new("42", "private:room")).unwrap();
    assert_eq!(
        v.verify_connection_token(&subscription).unwrap_err(),
        TokenError::WrongKind
    );
    assert!(v
        .verify_subscription_token(&subscription, "42", "private:room")
        .is_ok());
}

#[test]
fn malformed_strings() {
    let v = hmac_verifier();
    let good = hs(Algorithm::HS256, &json!({"sub": "1"}));
    let parts: Vec<&str> = good.split('.').collect();
    for bad in [
        String::new(),
        "abc".into(),
        "a.b".into(),
        "a.b.c.d".into(),
        format!("{good}.extra"),
        format!("!!!.{}.{}", parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode("not json"),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode("[1,2]"),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT"}"#),
            parts[1],
            parts[2]
        ),
        format!("{}.{}.{}", parts[0], "%%%", parts[2]),
        raw_token(
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            r#"{"sub":"1"}"#,
            "c2ln",
        ),
    ] {
        assert!(
            matches!(
                v.verify_connection_token(&bad),
                Err(TokenError::Malformed(_))
            ),
            "{bad:?} gave {:?}",
            v.verify_connection_token(&bad)
        );
    }
    // A garbage signature on a well-formed token is a bad signature.
    let t = format!("{}.{}.{}", parts[0], parts[1], "AAAA");
    assert_eq!(
        v.verify_connection_token(&t).unwrap_err(),
        TokenError::BadSignature
    );
}

#[test]
fn signed_claims_of_the_wrong_shape_are_invalid_claims() {
    let v = hmac_verifier();
    for claims in [
        json!({"sub": 42}),
        json!({"sub": "1", "channels": "news"}),
        json!({"sub": "1", "exp": "tomorrow"}),
        json!(["not", "an", "object"]),
    ] {
        let token = hs(Algorithm::HS256, &claims);
        assert!(
            matches!(
                v.verify_connection_token(&token),
                Err(TokenError::InvalidClaims(_))
            ),
            "{claims} gave {:?}",
            v.verify_connection_token(&token)
        );
    }
}

#[test]
fn audience_and_issuer_are_enforced_when_configured() {
    let v = hmac_verifier()
        .with_audience("switchboard")
        .with_issuer("backend");
    let ok = hs(
        Algorithm::HS256,
        &json!({"sub": "1", "aud": "switchboard", "iss": "backend"}),
    );
    assert!(v.verify_connection_token(&ok).is_ok());
    let list = hs(
        Algorithm::HS256,
        &json!({"sub": "1", "aud": ["other", "switchboard"], "iss": "backend"}),
    );
    assert!(v.verify_connection_token(&list).is_ok());
    for (claims, err) in [
        (
            json!({"sub": "1", "aud": "other", "iss": "backend"}),
            TokenError::WrongAudience,
        ),
        (
            json!({"sub": "1", "iss": "backend"}),
            TokenError::WrongAudience,
        ),
        (
            json!({"sub": "1", "aud": "switchboard", "iss": "evil"}),
            TokenError::WrongIssuer,
        ),
        (
            json!({"sub": "1", "aud": "switchboard"}),
            TokenError::WrongIssuer,
        ),
    ] {
        assert_eq!(
            v.verify_connection_token(&hs(Algorithm::HS256, &claims))
                .unwrap_err(),
            err,
            "{claims}"
        );
    }
    // Without configuration, aud and iss are not checked.
    let plain = hmac_verifier();
    let c = plain
        .verify_connection_token(&hs(
            Algorithm::HS256,
            &json!({"sub": "1", "aud": "x", "iss": "y"}),
        ))
        .unwrap();
    assert_eq!(c.iss.as_deref(), Some("y"));
}

#[test]
fn config_from_toml() {
    let config: TokenConfig = toml::from_str(
        r#"
        token_hmac_secret = "a-secret-for-tests-only"
        token-audience = "switchboard"
        token_leeway = 5
        allow_anonymous = true
        "#,
    )
    .unwrap();
    assert!(config.allow_anonymous && config.has_keys());
    let v = config.verifier().unwrap().with_clock(|| at(NOW));
    let token = hs(
        Algorithm::HS256,
        &json!({"sub": "9", "aud": "switchboard", "exp": NOW - 2}),
    );
    assert_eq!(v.verify_connection_token(&token).unwrap().sub, "9");
    let no_aud = hs(Algorithm::HS256, &json!({"sub": "9"}));
    assert_eq!(
        v.verify_connection_token(&no_aud).unwrap_err(),
        TokenError::WrongAudience
    );

    assert!(!TokenConfig::default().has_keys());
    let empty = TokenConfig {
        token_hmac_secret: Some(String::new()),
        ..Default::default()
    };
    assert!(matches!(
        empty.verifier(),
        Err(TokenConfigError::EmptySecret)
    ));
    let garbage = TokenConfig {
        token_ecdsa_public_key: Some(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
        ),
        ..Default::default()
    };
    assert!(matches!(
        garbage.verifier(),
        Err(TokenConfigError::Key { kind: "ECDSA", .. })
    ));
    let missing = TokenConfig {
        token_rsa_public_key: Some("/nonexistent/key.pem".into()),
        ..Default::default()
    };
    assert!(matches!(
        missing.verifier(),
        Err(TokenConfigError::Io { .. })
    ));
}
