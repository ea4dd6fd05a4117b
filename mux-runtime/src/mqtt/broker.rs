//! One connection to the broker, over MQTT 5 or 3.1.1 (rumqttc has one
//! client per version): the bridge sees one [`Client`] to publish with and
//! one [`Connection`] to poll, whichever version was negotiated.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as QoS5;

/// Which protocol version a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V5,
    V311,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V5 => "MQTT 5",
            Version::V311 => "MQTT 3.1.1",
        })
    }
}

/// What a connection needs.
#[derive(Clone, Debug)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub keep_alive: Duration,
    /// The last will: topic, payload, retained.
    pub will: (String, Vec<u8>, bool),
    /// The largest packet we accept from the broker.
    pub max_incoming: u32,
    /// TLS (`mqtts://`): the rustls configuration.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// The MQTT 5 request/response properties of a publish: where the
/// answers go and what they carry back. Dropped over 3.1.1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Props {
    pub response_topic: Option<String>,
    pub correlation: Option<Bytes>,
}

/// One message received.
#[derive(Clone, Debug)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT 5 only.
    pub props: Props,
}

/// What polling the connection yielded.
pub enum Event {
    /// Connected (again): subscriptions must be made anew. `max_packet`:
    /// the broker's limit on packets it takes (MQTT 5 CONNACK).
    Connected {
        max_packet: Option<u32>,
    },
    Message(Received),
    Other,
}

/// Why polling failed; `reached_broker`: the TCP connection was made, so
/// the failure is the broker's answer (which the version fallback uses).
#[derive(Debug)]
pub struct PollError {
    pub why: String,
    pub reached_broker: bool,
}

#[derive(Clone)]
pub enum Client {
    V5(v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

pub enum Connection {
    V5(Box<v5::EventLoop>),
    V311(Box<rumqttc::EventLoop>),
}

/// The shortest keep-alive rumqttc's MQTT 5 client takes (it panics on
/// less).
pub const MIN_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Requests rumqttc queues before `publish` waits.
const QUEUE: usize = 1024;

/// TCP_NODELAY: requests and answers are small and each is waited for;
/// Nagle's algorithm with delayed ACKs would hold each for ~40 ms.
fn network() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// rumqttc's transport for `o`: TCP, or TLS with its rustls config.
fn transport(o: &Options) -> rumqttc::Transport {
    match &o.tls {
        Some(c) => {
            rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(c.clone()))
        }
        None => rumqttc::Transport::Tcp,
    }
}

pub fn open(o: &Options, version: Version) -> (Client, Connection) {
    let keep_alive = o.keep_alive.max(MIN_KEEP_ALIVE);
    match version {
        Version::V5 => {
            let mut m = v5::MqttOptions::new(&o.client_id, &o.host, o.port);
            m.set_keep_alive(keep_alive)
                .set_clean_start(true)
                .set_max_packet_size(Some(o.max_incoming))
                .set_last_will(p5::LastWill::new(
                    o.will.0.clone(),
                    o.will.1.clone(),
                    QoS5::AtLeastOnce,
                    o.will.2,
                    None,
                ));
            if let Some((user, pass)) = &o.credentials {
                m.set_credentials(user, pass);
            }
            m.set_network_options(network());
            m.set_transport(transport(o));
            let (c, e) = v5::AsyncClient::new(m, QUEUE);
            (Client::V5(c), Connection::V5(Box::new(e)))
        }
        Version::V311 => {
            let mut m = rumqttc::MqttOptions::new(&o.client_id, &o.host, o.port);
            m.set_keep_alive(keep_alive)
                .set_clean_session(true)
                .set_max_packet_size(o.max_incoming as usize, usize::MAX)
                .set_last_will(rumqttc::LastWill::new(
                    o.will.0.clone(),
                    o.will.1.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    o.will.2,
                ));
            if let Some((user, pass)) = &o.credentials {
                m.set_credentials(user, pass);
            }
            m.set_transport(transport(o));
            let (c, mut e) = rumqttc::AsyncClient::new(m, QUEUE);
            e.set_network_options(network());
            (Client::V311(c), Connection::V311(Box::new(e)))
        }
    }
}

impl Client {
    pub fn version(&self) -> Version {
        match self {
            Client::V5(_) => Version::V5,
            Client::V311(_) => Version::V311,
        }
    }

    /// Publishes at QoS 1; `props` are dropped over 3.1.1 (the bridge
    /// wraps requests instead).
    pub async fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        props: Props,
    ) -> Result<(), String> {
        match self {
            Client::V5(c) => match props {
                Props {
                    response_topic: None,
                    correlation: None,
                } => c.publish(topic, QoS5::AtLeastOnce, retain, payload).await,
                Props {
                    response_topic,
                    correlation,
                } => {
                    let props = p5::PublishProperties {
                        response_topic,
                        correlation_data: correlation,
                        ..Default::default()
                    };
                    c.publish_with_properties(topic, QoS5::AtLeastOnce, retain, payload, props)
                        .await
                }
            }
            .map_err(|e| e.to_string()),
            Client::V311(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    pub async fn subscribe(&self, filter: String) -> Result<(), String> {
        match self {
            Client::V5(c) => c.subscribe(filter, QoS5::AtLeastOnce).await,
            Client::V311(c) => {
                return c
                    .subscribe(filter, rumqttc::QoS::AtLeastOnce)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
        .map_err(|e| e.to_string())
    }

    pub async fn disconnect(&self) {
        let _ = match self {
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V311(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

/// `why`, with what to do when it is a TLS failure.
fn with_hint(why: String) -> String {
    match super::tls::hint(&why) {
        Some(h) => format!("{why}: {h}"),
        None => why,
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Connection {
    pub async fn poll(&mut self) -> Result<Event, PollError> {
        match self {
            Connection::V5(e) => match e.poll().await {
                Ok(v5::Event::Incoming(p5::Packet::ConnAck(ack))) => Ok(Event::Connected {
                    max_packet: ack.properties.and_then(|p| p.max_packet_size),
                }),
                Ok(v5::Event::Incoming(p5::Packet::Publish(p))) => {
                    let props = p
                        .properties
                        .map(|props| Props {
                            response_topic: props.response_topic,
                            correlation: props.correlation_data,
                        })
                        .unwrap_or_default();
                    Ok(Event::Message(Received {
                        topic: lossy(&p.topic),
                        payload: p.payload,
                        props,
                    }))
                }
                Ok(_) => Ok(Event::Other),
                Err(e) => Err(PollError {
                    reached_broker: !matches!(
                        e,
                        v5::ConnectionError::Io(_) | v5::ConnectionError::Tls(_)
                    ),
                    why: with_hint(e.to_string()),
                }),
            },
            Connection::V311(e) => match e.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    Ok(Event::Connected { max_packet: None })
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    Ok(Event::Message(Received {
                        topic: p.topic,
                        payload: p.payload,
                        props: Props::default(),
                    }))
                }
                Ok(_) => Ok(Event::Other),
                Err(e) => Err(PollError {
                    reached_broker: !matches!(
                        e,
                        rumqttc::ConnectionError::Io(_) | rumqttc::ConnectionError::Tls(_)
                    ),
                    why: with_hint(e.to_string()),
                }),
            },
        }
    }
}
