//! `switchboard token --user ID`: mints an HS256 connection token (or, with `--channel`, a
//! subscription token) for development and prints it on stdout.
//!
//! Production tokens come from the application's backend, which holds the secret; this
//! command exists so a developer can try authenticated connections, private channels and
//! server-side subscriptions without writing that backend first.
//!
//! The secret is taken from, in order: `--secret`, the `SWITCHBOARD_TOKEN_HMAC_SECRET`
//! environment variable, the `token_hmac_secret` key of the `--config` file (or of the file
//! named by `SWITCHBOARD_CONFIG`) — the same key the server reads to verify tokens.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use switchboard_server::auth::{sign_hs256, Audience, ConnectionClaims, SubscriptionClaims};

/// Shown after the flags in `switchboard token --help`.
const AFTER_HELP: &str = "\
Prints one token on stdout. Durations: a number with a unit, e.g. 30s, 15m, 1h, 7d, 1h30m
(a bare number is seconds); --ttl 0 makes a token without expiry.

Examples:
  switchboard token --user 42 --secret dev-secret
  switchboard token --user 42 --info '{\"name\":\"Ada\"}' --subscribe news
  switchboard token --user 42 --channel private:room --ttl 15m

Exit status: 0 on success, 2 for invalid arguments or no secret.";

/// Flags of the `token` command.
#[derive(Debug, Clone, Args)]
#[command(after_help = AFTER_HELP)]
pub struct TokenArgs {
    /// User id (`sub` claim); an empty string makes an anonymous user's token.
    #[arg(long, value_name = "ID")]
    pub user: String,

    /// How long the token is valid.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,

    /// Make a subscription token for this (private) channel instead of a connection token.
    #[arg(long, value_name = "CHANNEL", conflicts_with = "subscribe")]
    pub channel: Option<String>,

    /// Channel the server subscribes the connection to at connect (`channels` claim);
    /// repeatable.
    #[arg(long, value_name = "CHANNEL")]
    pub subscribe: Vec<String>,

    /// JSON for the `info` claim, shown to other clients in presence and join events.
    #[arg(long, value_name = "JSON")]
    pub info: Option<String>,

    /// `aud` claim (needed when the server sets `token_audience`).
    #[arg(long, value_name = "AUDIENCE")]
    pub audience: Option<String>,

    /// `iss` claim (needed when the server sets `token_issuer`).
    #[arg(long, value_name = "ISSUER")]
    pub issuer: Option<String>,

    /// HMAC secret shared with the server.
    #[arg(
        long,
        env = "SWITCHBOARD_TOKEN_HMAC_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret: Option<String>,

    /// TOML config file to read `token_hmac_secret` from when no secret is given.
    #[arg(long, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Runs `switchboard token`: prints the token, or the error on stderr with exit status 2.
pub fn run(args: TokenArgs) -> ExitCode {
    match mint(&args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Builds and signs the token the flags describe.
pub fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    let secret = secret(args)?;
    let expiry = (!args.ttl.is_zero()).then_some(args.ttl);
    let token = match &args.channel {
        Some(channel) => {
            let mut claims = SubscriptionClaims::new(&args.user, channel);
            if let Some(ttl) = expiry {
                claims = claims.expires_in(ttl);
            }
            if let Some(info) = &args.info {
                claims = claims.with_info(info).context("--info is not valid JSON")?;
            }
            claims.aud = args.audience.clone().map(Audience::One);
            claims.iss = args.issuer.clone();
            sign_hs256(secret.as_bytes(), &claims)?
        }
        None => {
            let mut claims = ConnectionClaims::new(&args.user);
            if let Some(ttl) = expiry {
                claims = claims.expires_in(ttl);
            }
            if let Some(info) = &args.info {
                claims = claims.with_info(info).context("--info is not valid JSON")?;
            }
            claims.channels = args.subscribe.clone();
            claims.aud = args.audience.clone().map(Audience::One);
            claims.iss = args.issuer.clone();
            sign_hs256(secret.as_bytes(), &claims)?
        }
    };
    Ok(token)
}

fn secret(args: &TokenArgs) -> anyhow::Result<String> {
    let secret = match (&args.secret, &args.config) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => secret_from_config(path)?,
        (None, None) => bail!(
            "no secret: pass --secret, set SWITCHBOARD_TOKEN_HMAC_SECRET, \
             or point --config at a file with token_hmac_secret"
        ),
    };
    if secret.is_empty() {
        bail!("the HMAC secret is empty");
    }
    Ok(secret)
}

fn secret_from_config(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    let value = table
        .get("token_hmac_secret")
        .or_else(|| table.get("token-hmac-secret"))
        .ok_or_else(|| anyhow!("{} has no token_hmac_secret", path.display()))?;
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("token_hmac_secret in {} is not a string", path.display()))
}

/// Parses `30s`, `15m`, `1h`, `7d`, combinations such as `1h30m`, or bare seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let err = || format!("invalid duration {text:?} (examples: 30s, 15m, 1h, 7d, 1h30m)");
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(err)?;
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        let s = |n| Ok(Duration::from_secs(n));
        assert_eq!(parse_duration("30s"), s(30));
        assert_eq!(parse_duration("15m"), s(900));
        assert_eq!(parse_duration("1h"), s(3600));
        assert_eq!(parse_duration("7d"), s(604_800));
        assert_eq!(parse_duration("1h30m"), s(5400));
        assert_eq!(parse_duration("90"), s(90));
        assert_eq!(parse_duration("0"), s(0));
        for bad in [
            "",
            "h",
            "1x",
            "1.5h",
            "-1s",
            "1h m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
