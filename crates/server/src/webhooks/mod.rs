//! Webhooks in Pusher's format, for every protocol: the backend learns when channels become
//! occupied or vacated, when users join or leave presence channels, when clients send client
//! events, and (where configured) when connections come and go.
//!
//! * [`mod@self`]: the configuration (`[[webhooks]]`, and the targets each Pusher app's
//!   `[[pusher.apps.webhooks]]` implies), the events and which target wants which event.
//! * [`sender`]: one bounded queue and one task per target; events are batched into
//!   `{"time_ms":…,"events":[…]}` bodies, signed (`X-Pusher-Key`, `X-Pusher-Signature` =
//!   hex HMAC-SHA256 of the body with the secret), POSTed with a timeout and retried with
//!   exponential backoff. Queuing never waits: a full queue drops the event (counted and
//!   logged), so a slow or dead receiver never slows fan-out.
//! * [`observer`]: turns the hub's joins and leaves into `channel_occupied`,
//!   `channel_vacated`, `member_added` and `member_removed`, decided cluster-wide by the
//!   broker so that each is sent by exactly one node.
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

pub mod observer;
pub mod sender;

pub use observer::WebhookObserver;
pub use sender::{WebhookStats, Webhooks};

/// Default time one webhook request may take (connect, send, answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of events each target's queue holds before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 10_000;

/// A `[[webhooks]]` table: a target for events of every protocol.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL events are POSTed to (`http://`).
    pub url: String,
    /// Signs each body (`X-Pusher-Signature`).
    pub secret: String,
    /// Sent as `X-Pusher-Key`, so the receiver knows which secret to check with.
    pub key: String,
    /// Which events; empty means every channel event (`connect`/`disconnect` only when
    /// listed).
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Only channels of these namespaces (`""` is the default namespace); absent means
    /// every channel.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
}

/// The kinds of events a webhook reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A channel got its first member in the whole cluster.
    ChannelOccupied,
    /// A channel lost its last member in the whole cluster.
    ChannelVacated,
    /// A user's first connection joined a presence channel.
    MemberAdded,
    /// A user's last connection left a presence channel.
    MemberRemoved,
    /// A Pusher client sent a `client-` event.
    ClientEvent,
    /// A Pusher client subscribed to a `cache-` channel with nothing cached.
    CacheMiss,
    /// A connection was opened (any protocol).
    Connect,
    /// A connection was closed (any protocol).
    Disconnect,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 8] = [
        EventKind::ChannelOccupied,
        EventKind::ChannelVacated,
        EventKind::MemberAdded,
        EventKind::MemberRemoved,
        EventKind::ClientEvent,
        EventKind::CacheMiss,
        EventKind::Connect,
        EventKind::Disconnect,
    ];

    /// The event's `name` in the body and in `event_types`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::ChannelOccupied => "channel_occupied",
            EventKind::ChannelVacated => "channel_vacated",
            EventKind::MemberAdded => "member_added",
            EventKind::MemberRemoved => "member_removed",
            EventKind::ClientEvent => "client_event",
            EventKind::CacheMiss => "cache_miss",
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of [`EventKind`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kinds(u16);

impl Kinds {
    /// The kinds named in `event_types`; an empty list means every channel event (not
    /// `connect`/`disconnect`, which a receiver must ask for). Unknown names are an error.
    pub fn from_names(names: &[String]) -> Result<Kinds, String> {
        if names.is_empty() {
            let mut k = Kinds::default();
            for kind in EventKind::ALL {
                if !matches!(kind, EventKind::Connect | EventKind::Disconnect) {
                    k.insert(kind);
                }
            }
            return Ok(k);
        }
        let mut k = Kinds::default();
        for name in names {
            let kind = EventKind::parse(name).ok_or_else(|| {
                format!("unknown webhook event type {name:?} (known: channel_occupied, channel_vacated, member_added, member_removed, client_event, cache_miss, connect, disconnect)")
            })?;
            k.insert(kind);
        }
        Ok(k)
    }

    /// Adds `kind`.
    pub fn insert(&mut self, kind: EventKind) {
        self.0 |= kind.bit();
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Whether the set has any of `kinds`.
    pub fn any(self, kinds: &[EventKind]) -> bool {
        kinds.iter().any(|k| self.contains(*k))
    }
}

/// One event, in Pusher's webhook format once serialised.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The channel (absent for `connect`/`disconnect`).
    pub channel: Option<Arc<str>>,
    /// The Pusher app the event belongs to (client events, cache misses); `None` for
    /// events of the shared channel space.
    pub app: Option<Arc<str>>,
    /// Every other field of the event (`user_id`, `event`, `data`, `socket_id`, …).
    pub fields: Map<String, Value>,
}

impl Event {
    /// An event about `channel` with no other field.
    pub fn channel(kind: EventKind, channel: &str) -> Event {
        Event {
            kind,
            channel: Some(Arc::from(channel)),
            app: None,
            fields: Map::new(),
        }
    }

    /// Adds a field.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Event {
        self.fields.insert(name.to_string(), value.into());
        self
    }

    /// The event as a JSON object: `name`, `channel`, then the other fields.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("name".into(), Value::from(self.kind.name()));
        if let Some(c) = &self.channel {
            o.insert("channel".into(), Value::from(&**c));
        }
        for (k, v) in &self.fields {
            o.insert(k.clone(), v.clone());
        }
        Value::Object(o)
    }
}

/// Where one target's events go and which events it wants.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL, parsed.
    pub url: sender::Url,
    /// `X-Pusher-Key`.
    pub key: String,
    /// Signs bodies.
    pub secret: String,
    /// The events it wants.
    pub kinds: Kinds,
    /// Only channels of these namespaces, when set.
    pub namespaces: Option<Vec<String>>,
    /// A Pusher app's target: only that app's events and channels Pusher can name.
    pub app: Option<Arc<str>>,
}

impl Target {
    /// Whether this target wants `event`.
    pub fn wants(&self, event: &Event) -> bool {
        if !self.kinds.contains(event.kind) {
            return false;
        }
        if let (Some(mine), Some(theirs)) = (&self.app, &event.app) {
            if mine != theirs {
                return false;
            }
        }
        let Some(channel) = event.channel.as_deref() else {
            return true;
        };
        if self.app.is_some() && channel.contains(switchboard_core::NAMESPACE_SEPARATOR) {
            // Pusher channel names have no `:`: such a channel is not one of the app's.
            return false;
        }
        match &self.namespaces {
            None => true,
            Some(list) => {
                let ns = channel
                    .split_once(switchboard_core::NAMESPACE_SEPARATOR)
                    .map_or("", |(ns, _)| ns);
                list.iter().any(|n| n == ns)
            }
        }
    }
}

/// The targets of a configuration: every `[[webhooks]]` table, then every Pusher app's
/// `[[pusher.apps.webhooks]]` (signed with that app's key and secret).
pub fn targets(config: &crate::config::ServerConfig) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for w in &config.webhooks {
        out.push(Target {
            url: sender::Url::parse(&w.url)?,
            key: w.key.clone(),
            secret: w.secret.clone(),
            kinds: Kinds::from_names(&w.event_types)?,
            namespaces: w.namespaces.clone(),
            app: None,
        });
    }
    for app in &config.pusher.apps {
        for w in &app.webhooks {
            out.push(Target {
                url: sender::Url::parse(&w.url)?,
                key: app.key.clone(),
                secret: app.secret.clone(),
                kinds: Kinds::from_names(&w.event_types)?,
                namespaces: None,
                app: Some(Arc::from(app.id.as_str())),
            });
        }
    }
    Ok(out)
}

/// Parses a duration: `"1s"`, `"500ms"`, `"2m"`, or a plain number of seconds (`"1.5"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (e.g. \"1s\", \"500ms\", \"2\")"))?;
    Duration::try_from_secs_f64(v * scale).map_err(|_| format!("not a valid duration: {s:?}"))
}

/// Deserialises a duration written as [`parse_duration`] reads it, or as a number of
/// seconds.
pub fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Float(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(Duration::from_secs(n)),
        Raw::Float(f) => Duration::try_from_secs_f64(f).map_err(serde::de::Error::custom),
        Raw::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kinds: &[&str], namespaces: Option<Vec<&str>>, app: Option<&str>) -> Target {
        Target {
            url: sender::Url::parse("http://127.0.0.1:1/hook").unwrap(),
            key: "k".into(),
            secret: "s".into(),
            kinds: Kinds::from_names(&kinds.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap(),
            namespaces: namespaces.map(|v| v.into_iter().map(String::from).collect()),
            app: app.map(Arc::from),
        }
    }

    #[test]
    fn durations_read_units_and_plain_seconds() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn event_types_and_namespaces_filter_per_target() {
        assert!(Kinds::from_names(&["channel_opened".into()]).is_err());
        let all = Kinds::from_names(&[]).unwrap();
        assert!(all.contains(EventKind::ChannelOccupied) && all.contains(EventKind::CacheMiss));
        assert!(!all.contains(EventKind::Connect) && !all.contains(EventKind::Disconnect));

        let t = target(&["channel_occupied", "connect"], Some(vec!["chat"]), None);
        assert!(t.wants(&Event::channel(EventKind::ChannelOccupied, "chat:1")));
        assert!(!t.wants(&Event::channel(EventKind::ChannelOccupied, "news:1")));
        assert!(!t.wants(&Event::channel(EventKind::ChannelOccupied, "lobby")));
        assert!(!t.wants(&Event::channel(EventKind::ChannelVacated, "chat:1")));
        let connect = Event {
            kind: EventKind::Connect,
            channel: None,
            app: None,
            fields: Map::new(),
        };
        assert!(t.wants(&connect), "connections have no namespace");

        let default_ns = target(&["channel_occupied"], Some(vec![""]), None);
        assert!(default_ns.wants(&Event::channel(EventKind::ChannelOccupied, "lobby")));
        assert!(!default_ns.wants(&Event::channel(EventKind::ChannelOccupied, "chat:1")));

        let pusher = target(&["client_event", "channel_occupied"], None, Some("app-1"));
        assert!(pusher.wants(&Event::channel(EventKind::ChannelOccupied, "private-a")));
        assert!(!pusher.wants(&Event::channel(EventKind::ChannelOccupied, "chat:1")));
        let mut other_app = Event::channel(EventKind::ClientEvent, "private-a");
        other_app.app = Some(Arc::from("app-2"));
        assert!(!pusher.wants(&other_app));
        other_app.app = Some(Arc::from("app-1"));
        assert!(pusher.wants(&other_app));
    }

    #[test]
    fn events_serialise_in_pushers_field_names() {
        let e = Event::channel(EventKind::MemberAdded, "presence-x").with("user_id", "42");
        assert_eq!(
            e.to_json(),
            serde_json::json!({"name": "member_added", "channel": "presence-x", "user_id": "42"})
        );
    }
}
