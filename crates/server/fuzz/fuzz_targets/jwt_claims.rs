//! Fuzz token verification. Half the inputs are whole tokens (any bytes); the other half are
//! claims (any bytes, valid JSON or not) signed with the verifier's own HS256 secret, so
//! the claims parser itself is reached: time claims of any size and type, odd `channels`,
//! `info`, `b64info`, `aud`, `iss`. Verified as connection and as subscription tokens, with
//! and without audience and issuer checks. Checks: no panic; a token signed with a key the
//! verifier does not have is never accepted.
#![no_main]

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use switchboard_server::auth::TokenVerifier;

const SECRET: &[u8] = b"fuzz-secret";

/// `header.claims.signature` over the exact claim bytes.
fn signed(claims: &[u8], key: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!(
        "{}.{}",
        b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(key),
        Algorithm::HS256,
    )
    .expect("HMAC signing");
    format!("{message}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let Some((flags, rest)) = data.split_first() else {
        return;
    };
    let mut verifier = TokenVerifier::new().with_hmac_secret(SECRET);
    if flags & 2 != 0 {
        verifier = verifier.with_audience("aud").with_issuer("iss");
    }
    let token = if flags & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        signed(rest, SECRET)
    };
    let _ = verifier.verify_connection_token(&token);
    let _ = verifier.verify_subscription_token(&token, "42", "chat");
    let _ = verifier.verify_subscription_token(&token, "", "");
    if flags & 1 != 0 {
        let forged = signed(rest, b"another-secret");
        assert!(
            verifier.verify_connection_token(&forged).is_err(),
            "forged token accepted"
        );
        assert!(
            verifier
                .verify_subscription_token(&forged, "42", "chat")
                .is_err(),
            "forged subscription token accepted"
        );
    }
});
