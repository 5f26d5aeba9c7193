//! `switchboard token`: runs the real binary and verifies what it prints with the server's
//! token verifier.
use std::process::{Command, Output};
use std::time::{Duration, UNIX_EPOCH};

use switchboard::server::auth::{TokenError, TokenVerifier};

const SECRET: &str = "cli-test-secret";

/// The binary with no token settings inherited from the environment.
fn token_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.arg("token")
        .env_remove("SWITCHBOARD_TOKEN_HMAC_SECRET")
        .env_remove("SWITCHBOARD_CONFIG");
    cmd
}

/// Runs and returns the single printed token, failing on anything else.
fn mint(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stdout: {stdout:?}");
    lines[0].to_owned()
}

fn verifier(secret: &str) -> TokenVerifier {
    TokenVerifier::new().with_hmac_secret(secret)
}

fn assert_usage_error(out: Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "nothing on stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} lacks {needle:?}"
    );
}

#[test]
fn connection_token_with_info_channels_and_ttl() {
    let token = mint(token_cmd().args([
        "--user",
        "42",
        "--secret",
        SECRET,
        "--ttl",
        "15m",
        "--info",
        r#"{"name":"Ada"}"#,
        "--subscribe",
        "news",
        "--subscribe",
        "chat:lobby",
    ]));
    let claims = verifier(SECRET).verify_connection_token(&token).unwrap();
    assert_eq!(claims.sub, "42");
    assert_eq!(claims.channels, vec!["news", "chat:lobby"]);
    assert_eq!(claims.info.unwrap().get(), r#"{"name":"Ada"}"#);
    let (iat, exp) = (claims.iat.unwrap(), claims.exp.unwrap());
    assert_eq!(exp - iat, 900);

    // It expires when the ttl says so.
    let later = verifier(SECRET).with_clock(move || UNIX_EPOCH + Duration::from_secs(exp));
    assert_eq!(
        later.verify_connection_token(&token).unwrap_err(),
        TokenError::Expired
    );
    // And it is useless with another secret.
    assert_eq!(
        verifier("other")
            .verify_connection_token(&token)
            .unwrap_err(),
        TokenError::BadSignature
    );
}

#[test]
fn default_ttl_is_one_hour_and_zero_means_no_expiry() {
    let token = mint(token_cmd().args(["--user", "7", "--secret", SECRET]));
    let c = verifier(SECRET).verify_connection_token(&token).unwrap();
    assert_eq!(c.exp.unwrap() - c.iat.unwrap(), 3600);

    let token = mint(token_cmd().args(["--user", "7", "--secret", SECRET, "--ttl", "0"]));
    let c = verifier(SECRET).verify_connection_token(&token).unwrap();
    assert_eq!(c.exp, None);
}

#[test]
fn subscription_token_for_a_channel() {
    let token = mint(token_cmd().args([
        "--user",
        "42",
        "--channel",
        "private:room",
        "--ttl",
        "1h30m",
        "--secret",
        SECRET,
    ]));
    let v = verifier(SECRET);
    let c = v
        .verify_subscription_token(&token, "42", "private:room")
        .unwrap();
    assert_eq!(c.exp.unwrap() - c.iat.unwrap(), 5400);
    assert!(matches!(
        v.verify_subscription_token(&token, "42", "private:other"),
        Err(TokenError::WrongChannel { .. })
    ));
    assert_eq!(
        v.verify_connection_token(&token).unwrap_err(),
        TokenError::WrongKind
    );
}

#[test]
fn secret_from_environment_and_from_config_file() {
    let token = mint(
        token_cmd()
            .args(["--user", "env"])
            .env("SWITCHBOARD_TOKEN_HMAC_SECRET", "from-env"),
    );
    assert_eq!(
        verifier("from-env")
            .verify_connection_token(&token)
            .unwrap()
            .sub,
        "env"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\ntoken_hmac_secret = \"from-file\"\n",
    )
    .unwrap();
    let token = mint(token_cmd().args(["--user", "file", "--config"]).arg(&path));
    assert_eq!(
        verifier("from-file")
            .verify_connection_token(&token)
            .unwrap()
            .sub,
        "file"
    );
    // The environment variable names the file just as well, and --secret beats both.
    let token = mint(
        token_cmd()
            .args(["--user", "both", "--secret", SECRET])
            .env("SWITCHBOARD_CONFIG", &path),
    );
    assert!(verifier(SECRET).verify_connection_token(&token).is_ok());
}

#[test]
fn audience_and_issuer_flags() {
    let token = mint(token_cmd().args([
        "--user",
        "1",
        "--secret",
        SECRET,
        "--audience",
        "switchboard",
        "--issuer",
        "dev",
    ]));
    let strict = verifier(SECRET)
        .with_audience("switchboard")
        .with_issuer("dev");
    assert!(strict.verify_connection_token(&token).is_ok());
    let other = verifier(SECRET).with_audience("elsewhere");
    assert_eq!(
        other.verify_connection_token(&token).unwrap_err(),
        TokenError::WrongAudience
    );
}

#[test]
fn usage_errors_exit_2_with_nothing_on_stdout() {
    assert_usage_error(
        token_cmd().args(["--user", "1"]).output().unwrap(),
        "no secret",
    );
    assert_usage_error(
        token_cmd()
            .args(["--user", "1", "--secret", SECRET, "--ttl", "soon"])
            .output()
            .unwrap(),
        "invalid duration",
    );
    assert_usage_error(
        token_cmd()
            .args(["--user", "1", "--secret", SECRET, "--info", "{nope"])
            .output()
            .unwrap(),
        "--info is not valid JSON",
    );
    assert_usage_error(
        token_cmd()
            .args(["--user", "1", "--config", "/nonexistent/switchboard.toml"])
            .output()
            .unwrap(),
        "cannot read config file",
    );
}
