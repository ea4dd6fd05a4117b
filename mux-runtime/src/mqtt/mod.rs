//! The MQTT bridge: muxes on several hosts join through one broker
//! (docs/mqtt.md).
//!
//! A mux with a bridge publishes each node it holds as a retained state,
//! serves requests arriving on the node's request topic like a local
//! client's, and forwards requests for nodes it does not hold to the mux
//! that does, through the broker. The pieces:
//!
//! - [`topic`]: the topic layout, pure.
//! - [`payload`]: what the messages carry (MsgPack), pure.
//! - [`broker`]: one rumqttc connection, MQTT 5 or 3.1.1.
//! - [`tls`]: TLS to the broker (`mqtts://`).
//! - [`ha`]: Home Assistant discovery configs and states, pure.
//! - `pipe`: endpoints whose transport is the broker.
//! - [`bridge`]: the running bridge: its connection supervisor, the
//!   endpoints it serves and forwards through.

pub mod bridge;
pub mod broker;
pub mod ha;
pub mod payload;
mod pipe;
pub mod tls;
pub mod topic;

use std::time::Duration;

pub use bridge::{Bridge, RemoteNode};
pub use broker::Version;
pub use payload::NodeState;
pub use topic::{TopicError, Topics};

/// The default MQTT port.
pub const DEFAULT_PORT: u16 = 1883;
/// The default MQTT-over-TLS port.
pub const DEFAULT_TLS_PORT: u16 = 8883;

/// The largest message the bridge publishes unless told otherwise (the
/// broker may allow less: MQTT 5 brokers say so when connecting).
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Which protocol version to speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VersionChoice {
    /// MQTT 5, falling back to 3.1.1 when the broker refuses it.
    #[default]
    Auto,
    Only(Version),
}

impl std::str::FromStr for VersionChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(VersionChoice::Auto),
            "5" | "5.0" => Ok(VersionChoice::Only(Version::V5)),
            "3" | "3.1.1" | "4" => Ok(VersionChoice::Only(Version::V311)),
            other => Err(format!(
                "`{other}` is not an MQTT version: use \"5\", \"3.1.1\" or \"auto\""
            )),
        }
    }
}

/// How a mux (or a client) reaches the broker.
#[derive(Clone, Debug, PartialEq)]
pub struct MqttConfig {
    /// `mqtt://[user[:password]@]host[:port]`.
    pub url: String,
    /// The MQTT client id, also the session's name on the broker (the
    /// `_s/<session>` and `_r/<session>` levels). Default: the mux's name.
    pub client_id: Option<String>,
    /// Override the URL's user name and password.
    pub credentials: Option<(String, String)>,
    /// Default `moat/<project>`.
    pub prefix: Option<String>,
    pub version: VersionChoice,
    /// The broker sends the last will after 1.5 times this without a
    /// packet.
    pub keep_alive: Duration,
    pub max_message: usize,
    /// Home Assistant entities (published by the mux holding their node).
    pub entities: Vec<ha::Entity>,
    /// CA and client certificate of an `mqtts://` broker.
    pub tls: tls::TlsFiles,
}

impl MqttConfig {
    pub fn new(url: &str) -> MqttConfig {
        MqttConfig {
            url: url.to_owned(),
            client_id: None,
            credentials: None,
            prefix: None,
            version: VersionChoice::Auto,
            keep_alive: Duration::from_secs(10),
            max_message: MAX_MESSAGE,
            entities: Vec::new(),
            tls: tls::TlsFiles::default(),
        }
    }
}

/// Why the bridge cannot start.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MqttError {
    #[error(
        "`{url}` is not a broker URL: {why} (write mqtt://HOST[:PORT], e.g. mqtt://localhost:1883, or mqtts://HOST[:PORT] for TLS)"
    )]
    BadUrl { url: String, why: String },
    #[error("TLS to the broker: {0}")]
    Tls(String),
    #[error("`{0}` is not a TLS URL but TLS files are given (ca, cert, key): write mqtts://")]
    TlsFilesWithoutTls(String),
    #[error(transparent)]
    Topic(#[from] TopicError),
}

/// The broker's address and credentials, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
    /// `mqtts://` (also `ssl://`, `tls://`).
    pub tls: bool,
}

impl BrokerAddr {
    pub fn parse(text: &str) -> Result<BrokerAddr, MqttError> {
        let bad = |why: &str| MqttError::BadUrl {
            url: text.to_owned(),
            why: why.to_owned(),
        };
        let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" | "tls" => true,
            other => return Err(bad(&format!("unknown scheme `{other}`"))),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !matches!(url.path(), "" | "/") {
            return Err(bad("a broker URL has no path"));
        }
        let credentials = (!url.username().is_empty()).then(|| {
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (
                decode(url.username()),
                url.password().map(decode).unwrap_or_default(),
            )
        });
        Ok(BrokerAddr {
            host,
            port: url
                .port()
                .unwrap_or(if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT }),
            credentials,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_give_host_port_and_credentials() {
        assert_eq!(
            BrokerAddr::parse("mqtt://127.0.0.1:4000").unwrap(),
            BrokerAddr {
                host: "127.0.0.1".into(),
                port: 4000,
                credentials: None,
                tls: false,
            }
        );
        let a = BrokerAddr::parse("mqtt://moat:s%40cret@broker.lan").unwrap();
        assert_eq!(a.port, DEFAULT_PORT);
        assert_eq!(a.credentials, Some(("moat".into(), "s@cret".into())));
        assert_eq!(BrokerAddr::parse("mqtt://[::1]:1").unwrap().host, "::1");
    }

    #[test]
    fn bad_urls_and_tls_say_what_to_write() {
        for url in ["localhost:1883", "http://x", "mqtt://host/path", "mqtt://"] {
            let e = BrokerAddr::parse(url).unwrap_err();
            assert!(e.to_string().contains("mqtt://HOST"), "{url}: {e}");
        }
        let tls = BrokerAddr::parse("mqtts://broker.lan").unwrap();
        assert!(tls.tls && tls.port == DEFAULT_TLS_PORT);
        assert_eq!(BrokerAddr::parse("ssl://b:1").unwrap().port, 1);
    }

    #[test]
    fn versions_read_from_text() {
        assert_eq!("auto".parse(), Ok(VersionChoice::Auto));
        assert_eq!("3.1.1".parse(), Ok(VersionChoice::Only(Version::V311)));
        assert_eq!("5".parse(), Ok(VersionChoice::Only(Version::V5)));
        assert!("6".parse::<VersionChoice>().is_err());
    }
}
