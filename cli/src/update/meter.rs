//! A client connection whose link-layer byte counters can be read, so
//! `moat diff-update --json` reports the bytes actually sent:
//!
//! - directly over TCP: the socket wrapped in [`Counted`];
//! - directly over serial/USB: the [`NodeLink`]'s own counters;
//! - through the mux: the mux's counters of its link to the node
//!   (`mux.ls` → `bytes_out`), i.e. the bytes on the node's link.
//!
//! It can also wait for the node to come back after a reboot.

use crate::client::{self, Client, Route, Target};
use crate::manifest::Node;
use crate::project::Project;
use anyhow::{bail, Context};
use mux_runtime::auth::AuthConfig;
use mux_runtime::endpoint::NoHandler;
use mux_runtime::link::{ByteCounters, LinkOptions, NodeLink};
use mux_runtime::message::PathElem;
use mux_runtime::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

enum Meter {
    Counted {
        addr: String,
        counters: Arc<ByteCounters>,
        auth: Option<AuthConfig>,
    },
    Mux,
    Link(NodeLink),
}

/// A [`Client`] with a byte meter.
pub struct Metered {
    pub client: Client,
    meter: Meter,
}

impl Metered {
    /// Connects to `node` the way every client verb does (mux when one
    /// runs, else directly), with a byte meter.
    pub async fn connect(
        project: &Project,
        node: &Node,
        target: &Target,
    ) -> anyhow::Result<Metered> {
        let client = Client::connect_in(Some(project), target).await?;
        match client.route().clone() {
            Route::Mux(_) => Ok(Metered {
                client,
                meter: Meter::Mux,
            }),
            Route::Tcp(addr) => {
                // Same route, counted.
                client.close().await;
                let counters = Arc::new(ByteCounters::default());
                let auth = client::auth_config(project, node)?;
                let (endpoint, _) =
                    client::connect_tcp(&addr, &node.name, auth.clone(), Some(counters.clone()))
                        .await?;
                Ok(Metered {
                    client: Client::from_endpoint(endpoint, &node.name, Route::Tcp(addr.clone())),
                    meter: Meter::Counted {
                        addr,
                        counters,
                        auth,
                    },
                })
            }
            Route::Mqtt(url) => {
                client.close().await;
                bail!("updating node `{}` over MQTT ({url}) is not supported: run it on the host whose mux holds the node", node.name)
            }
            Route::Device(d) => {
                client.close().await;
                let spec = client::link_spec(project, node)?;
                let options = LinkOptions {
                    connect_timeout: Duration::from_secs(10),
                    ..LinkOptions::default()
                };
                let auth = client::auth_config(project, node)?;
                let link =
                    NodeLink::spawn_auth(&node.name, spec, auth, Arc::new(NoHandler), options);
                let up = tokio::time::timeout(Duration::from_secs(10), link.wait_up()).await;
                let Ok(Some(endpoint)) = up else {
                    let why = link.state().to_string();
                    link.stop().await;
                    bail!("cannot reach node `{}` over {d}: {why}", node.name);
                };
                Ok(Metered {
                    client: Client::from_endpoint(endpoint, &node.name, Route::Device(d)),
                    meter: Meter::Link(link),
                })
            }
        }
    }

    /// Bytes sent on the node's link so far (by everyone, through a mux).
    pub async fn bytes_out(&self) -> anyhow::Result<u64> {
        match &self.meter {
            Meter::Counted { counters, .. } => Ok(counters.bytes_out.load(Ordering::Relaxed)),
            Meter::Link(link) => Ok(link.stats().bytes_out),
            Meter::Mux => {
                let ls = self
                    .client
                    .endpoint_call(
                        &[PathElem::from("mux"), PathElem::from("ls")],
                        Value::Map(vec![]),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("mux.ls: {e}"))?;
                ls.get(self.client.node())
                    .and_then(|n| n.get("bytes_out"))
                    .and_then(Value::as_int)
                    .and_then(|b| u64::try_from(b).ok())
                    .with_context(|| {
                        format!(
                            "the mux does not count node `{}`'s bytes",
                            self.client.node()
                        )
                    })
            }
        }
    }

    /// Waits (up to `timeout`) until the node answers again after a
    /// reboot, reconnecting a direct link.
    pub async fn wait_back(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        let node = self.client.node().to_owned();
        loop {
            if let Meter::Counted {
                addr,
                counters,
                auth,
            } = &self.meter
            {
                if !self.client.endpoint().is_up() {
                    let bytes = Some(counters.clone());
                    if let Ok((ep, _)) = client::connect_tcp(addr, &node, auth.clone(), bytes).await
                    {
                        self.client = Client::from_endpoint(ep, &node, Route::Tcp(addr.clone()));
                    }
                }
            }
            if let Meter::Link(link) = &self.meter {
                if let Some(ep) = link.endpoint() {
                    let route = self.client.route().clone();
                    self.client = Client::from_endpoint(ep, &node, route);
                }
            }
            let ping = self.client.call_names(&["sys", "info"], Value::Map(vec![]));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), ping).await {
                return Ok(());
            }
            if Instant::now() >= end {
                bail!(
                    "node `{node}` did not come back within {}s after its restart (a unix node run by `moat run` ends on a hard reset; the mux restarts it)",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn close(&self) {
        self.client.close().await;
        if let Meter::Link(link) = &self.meter {
            link.stop().await;
        }
    }
}
