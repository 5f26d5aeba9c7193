//! Channel namespaces: per-namespace [`ChannelOptions`], the [`Namespaces`]
//! registry a hub is configured with, and channel-name validation.
//!
//! A channel name `chat:room1` belongs to namespace `chat`; a name without a
//! colon (`room1`) belongs to the default namespace. Only the first colon
//! separates: `a:b:c` is channel `b:c` of namespace `a`. A name whose
//! namespace is not configured is refused, so a typo cannot silently create
//! channels with default options.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::ChannelError;

/// Separates the namespace from the rest of a channel name.
pub const NAMESPACE_SEPARATOR: char = ':';

/// Behaviour of the channels of one namespace.
///
/// Deserializable (e.g. from TOML); every field is optional and defaults to
/// off / zero, so `ChannelOptions::default()` is a plain room: no history, no
/// presence, clients may subscribe (authenticated users always, anonymous
/// ones only with [`allow_subscribe_for_anonymous`](Self::allow_subscribe_for_anonymous)),
/// and only the server publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelOptions {
    /// Keep track of who is subscribed ([`Hub::presence`](crate::Hub::presence)).
    pub presence: bool,
    /// Send join and leave events to the other members when a connection
    /// subscribes or unsubscribes ([`Delivery::Join`](crate::Delivery::Join)).
    pub join_leave: bool,
    /// Publications kept per channel for history and recovery; 0 disables
    /// history. History also needs a non-zero [`history_ttl`](Self::history_ttl).
    pub history_size: usize,
    /// How long a publication stays in history, and how long a channel with
    /// history outlives its last member. In configuration files: seconds.
    #[serde(deserialize_with = "seconds")]
    pub history_ttl: Duration,
    /// Protocols should recover missed publications on every subscribe to
    /// these channels even when the client did not ask for it. The hub only
    /// stores the flag; see [`Hub::subscribe_with`](crate::Hub::subscribe_with).
    pub force_recovery: bool,
    /// Connections without a user id may subscribe.
    pub allow_subscribe_for_anonymous: bool,
    /// Any connection may publish, subscribed or not.
    pub allow_publish_for_client: bool,
    /// Connections subscribed to the channel may publish in it.
    pub allow_publish_for_subscriber: bool,
    /// Connections subscribed to the channel may ask for its presence.
    pub allow_presence_for_subscriber: bool,
    /// Connections subscribed to the channel may ask for its history.
    pub allow_history_for_subscriber: bool,
    /// Subscribing needs a subscription token (checked by the caller, see
    /// [`ClientCtx::subscription_token`](crate::ClientCtx::subscription_token)).
    pub private: bool,
    /// Client subscriptions are decided by the application's backend (the server's
    /// subscribe proxy) instead of the permission flags above. The hub only stores it.
    pub proxy_subscribe: bool,
    /// Client publications pass the application's backend (the server's publish proxy),
    /// which may refuse or rewrite them, instead of the permission flags above.
    pub proxy_publish: bool,
    /// Expiring subscriptions are prolonged by the backend (the server's sub_refresh proxy).
    pub proxy_sub_refresh: bool,
}

impl ChannelOptions {
    /// Whether channels of this namespace keep history (size and TTL both set).
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
}

/// The namespaces a hub knows, with their options, plus the channel-wide
/// limits (name length, history memory).
///
/// Deserializable: `default` holds the default namespace's options,
/// `namespaces` the named ones, e.g. in TOML
///
/// ```toml
/// history_max_bytes = 67108864
/// [default]
/// allow_subscribe_for_anonymous = true
/// [namespaces.chat]
/// presence = true
/// join_leave = true
/// history_size = 100
/// history_ttl = 300
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Namespaces {
    /// Options of channels without a namespace.
    #[serde(deserialize_with = "arc_options")]
    pub default: Arc<ChannelOptions>,
    /// Named namespaces.
    #[serde(deserialize_with = "arc_options_map")]
    pub namespaces: BTreeMap<String, Arc<ChannelOptions>>,
    /// Longest accepted channel name, in bytes.
    pub max_channel_length: usize,
    /// Soft cap on the bytes held by all channel histories together; when
    /// exceeded, the histories of the channels that published least recently
    /// are dropped (their epoch changes) until usage is below 90% of the cap.
    pub history_max_bytes: usize,
    /// Options of default-namespace channels whose name starts with a prefix, set by the
    /// server rather than the configuration file (e.g. Pusher's `presence-` channels, which
    /// need presence and join/leave events). The first matching prefix wins.
    #[serde(skip)]
    pub prefixed: Vec<(String, Arc<ChannelOptions>)>,
}

fn arc_options<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<ChannelOptions>, D::Error> {
    ChannelOptions::deserialize(d).map(Arc::new)
}

fn arc_options_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Arc<ChannelOptions>>, D::Error> {
    let map = BTreeMap::<String, ChannelOptions>::deserialize(d)?;
    let map: BTreeMap<_, _> = map.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
    for name in map.keys() {
        if !valid_namespace_name(name) {
            return Err(serde::de::Error::custom(format!(
                "invalid namespace name {name:?}: use letters, digits, '_', '-' or '.'"
            )));
        }
    }
    Ok(map)
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            default: Arc::new(ChannelOptions::default()),
            namespaces: BTreeMap::new(),
            max_channel_length: Self::DEFAULT_MAX_CHANNEL_LENGTH,
            history_max_bytes: Self::DEFAULT_HISTORY_MAX_BYTES,
            prefixed: Vec::new(),
        }
    }
}

impl Namespaces {
    /// Default for [`max_channel_length`](Self::max_channel_length).
    pub const DEFAULT_MAX_CHANNEL_LENGTH: usize = 255;
    /// Default for [`history_max_bytes`](Self::history_max_bytes): 64 MiB.
    pub const DEFAULT_HISTORY_MAX_BYTES: usize = 64 << 20;

    /// Only the default namespace, with `default` options.
    pub fn new(default: ChannelOptions) -> Namespaces {
        Namespaces {
            default: Arc::new(default),
            ..Namespaces::default()
        }
    }

    /// Adds (or replaces) namespace `name`.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid namespace name (letters, digits, `_`, `-`,
    /// `.`; not empty).
    pub fn with(mut self, name: &str, options: ChannelOptions) -> Namespaces {
        assert!(
            valid_namespace_name(name),
            "invalid namespace name {name:?}"
        );
        self.namespaces.insert(name.to_owned(), Arc::new(options));
        self
    }

    /// Gives default-namespace channels starting with `prefix` these options (see
    /// [`prefixed`](Self::prefixed)).
    pub fn with_prefix(mut self, prefix: &str, options: ChannelOptions) -> Namespaces {
        self.prefixed.retain(|(p, _)| p != prefix);
        self.prefixed.push((prefix.to_owned(), Arc::new(options)));
        self
    }

    /// Checks `channel` and returns its namespace (`""` for the default one)
    /// and options.
    ///
    /// A valid name is 1 to [`max_channel_length`](Self::max_channel_length)
    /// bytes without control characters or whitespace (anything else, `/`
    /// and non-ASCII letters included, is allowed), and its namespace, if it
    /// has one, is configured.
    pub fn resolve<'a, 'c>(
        &'a self,
        channel: &'c str,
    ) -> Result<(&'c str, &'a Arc<ChannelOptions>), ChannelError> {
        if channel.is_empty()
            || channel.len() > self.max_channel_length
            || channel.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ChannelError::InvalidName);
        }
        match channel.split_once(NAMESPACE_SEPARATOR) {
            None => Ok((
                "",
                self.prefixed
                    .iter()
                    .find(|(p, _)| channel.starts_with(p.as_str()))
                    .map_or(&self.default, |(_, o)| o),
            )),
            Some((ns, _)) => match self.namespaces.get(ns) {
                Some(opts) => Ok((ns, opts)),
                None => Err(ChannelError::UnknownNamespace(ns.to_owned())),
            },
        }
    }

    /// Options for `channel`; see [`resolve`](Self::resolve).
    pub fn options(&self, channel: &str) -> Result<&Arc<ChannelOptions>, ChannelError> {
        self.resolve(channel).map(|(_, o)| o)
    }
}

fn valid_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_default_channels_get_their_own_options() {
        let ns = Namespaces::default().with_prefix(
            "presence-",
            ChannelOptions {
                presence: true,
                ..Default::default()
            },
        );
        assert!(ns.options("presence-room").unwrap().presence);
        assert!(!ns.options("room").unwrap().presence);
    }

    fn ns() -> Namespaces {
        Namespaces::default().with(
            "chat",
            ChannelOptions {
                presence: true,
                ..Default::default()
            },
        )
    }

    #[test]
    fn resolves_default_and_named_namespaces() {
        let ns = ns();
        let (name, opts) = ns.resolve("room1").unwrap();
        assert_eq!((name, opts.presence), ("", false));
        let (name, opts) = ns.resolve("chat:room1").unwrap();
        assert_eq!((name, opts.presence), ("chat", true));
        // Only the first colon separates.
        assert_eq!(ns.resolve("chat:a:b").unwrap().0, "chat");
        assert_eq!(ns.resolve("a/b/ü").unwrap().0, "");
    }

    #[test]
    fn refuses_bad_names_and_unknown_namespaces() {
        let ns = ns();
        assert_eq!(ns.resolve(""), Err(ChannelError::InvalidName));
        assert_eq!(ns.resolve("a b"), Err(ChannelError::InvalidName));
        assert_eq!(ns.resolve("a\u{0}"), Err(ChannelError::InvalidName));
        assert_eq!(ns.resolve(&"x".repeat(256)), Err(ChannelError::InvalidName));
        assert!(ns.resolve(&"x".repeat(255)).is_ok());
        assert_eq!(
            ns.resolve("news:today"),
            Err(ChannelError::UnknownNamespace("news".into()))
        );
        assert_eq!(
            ns.resolve(":x"),
            Err(ChannelError::UnknownNamespace(String::new()))
        );
    }

    #[test]
    fn deserializes_from_toml_with_ttl_in_seconds() {
        let ns: Namespaces = toml::from_str(
            r#"
            max_channel_length = 64
            [default]
            allow_subscribe_for_anonymous = true
            [namespaces.chat]
            presence = true
            join_leave = true
            history_size = 100
            history_ttl = 300
            [namespaces.ticks]
            history_size = 10
            history_ttl = 0.5
            "#,
        )
        .unwrap();
        assert!(ns.default.allow_subscribe_for_anonymous);
        assert_eq!(ns.max_channel_length, 64);
        assert_eq!(ns.history_max_bytes, Namespaces::DEFAULT_HISTORY_MAX_BYTES);
        let chat = ns.options("chat:x").unwrap();
        assert!(chat.presence && chat.join_leave && chat.history_enabled());
        assert_eq!(chat.history_ttl, Duration::from_secs(300));
        assert_eq!(
            ns.options("ticks:x").unwrap().history_ttl,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn deserialization_rejects_typos_and_bad_names() {
        assert!(toml::from_str::<Namespaces>("[default]\npresense = true").is_err());
        assert!(toml::from_str::<Namespaces>("[namespaces.\"a b\"]\npresence = true").is_err());
        assert!(toml::from_str::<Namespaces>("[default]\nhistory_ttl = -1").is_err());
    }

    #[test]
    fn history_needs_size_and_ttl() {
        let mut o = ChannelOptions {
            history_size: 10,
            ..Default::default()
        };
        assert!(!o.history_enabled());
        o.history_ttl = Duration::from_secs(1);
        assert!(o.history_enabled());
    }
}
