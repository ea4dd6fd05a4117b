//! `moat monitor`: a node's console output, live, while other clients use
//! its link.
//!
//! Through the mux it streams the mux's console capture of the node
//! (`mux.console n=NODE`: what the capture holds, then new output). Without
//! a mux it reads the console bytes of a direct serial/USB link. A TCP link
//! carries no console output: that node's console is where it runs (the
//! terminal of `moat run`).

use anyhow::{bail, Context};
use futures::StreamExt;
use moat::client::{self, Client, Route, Target};
use mux_runtime::message::PathElem;
use mux_runtime::Value;
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Only output from now on (skip what the mux captured before).
    #[arg(long)]
    pub new: bool,
    /// How often to look for new output through the mux, in ms.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub every: u32,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    client::block_on(async move {
        let client = Client::connect(&a.target).await?;
        let mut stdout = std::io::stdout();
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        tokio::select! {
            r = monitor(&client, a.new, a.every, &mut stdout) => r,
            r = &mut interrupted => r.context("waiting for Ctrl-C"),
        }?;
        super::cmd::settle().await;
        Ok(())
    })?
}

/// Copies the node's console output to `out` until the link ends.
pub async fn monitor(
    client: &Client,
    skip_history: bool,
    every_ms: u32,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match client.route() {
        Route::Mux(_) => {
            let ls = client
                .endpoint_call(&[PathElem::from("mux"), PathElem::from("ls")], Value::Nil)
                .await
                .map_err(|e| anyhow::anyhow!("mux.ls: {e}"))?;
            let kind = ls.get(client.node()).and_then(|n| n.get("kind"));
            if let Some(Value::Str(kind)) = kind {
                if kind == "tcp" {
                    bail!(
                        "node `{}` is reached over tcp, which carries no console output; its console is the terminal it runs in (`moat run`)",
                        client.node()
                    );
                }
            }
            let path = [PathElem::from("mux"), PathElem::from("console")];
            let args = Value::map([("n", Value::from(client.node()))]);
            let mut items = client.endpoint_stream(&path, args, every_ms);
            let mut first = true;
            while let Some(item) = items.next().await {
                let bytes = match item {
                    Ok(Value::Bin(b)) => b,
                    Ok(other) => bail!("mux.console sent {} instead of bytes", other.type_name()),
                    Err(e) => bail!("the mux's console of `{}`: {e}", client.node()),
                };
                if !(first && skip_history) {
                    out.write_all(&bytes)?;
                    out.flush()?;
                }
                first = false;
            }
            Ok(())
        }
        Route::Device(_) => {
            let mut console = client
                .console()
                .context("a device link without console output")?;
            loop {
                match console.recv().await {
                    Ok(bytes) => {
                        out.write_all(&bytes)?;
                        out.flush()?;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        writeln!(out, "\n[moat: {n} console chunks lost]")?;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
        Route::Mqtt(url) => bail!(
            "the console of node `{}` does not travel over MQTT ({url}); monitor it on the host whose mux holds it",
            client.node()
        ),
        Route::Tcp(addr) => bail!(
            "node `{}` is reached over tcp ({addr}), which carries no console output; \
             its console is the terminal it runs in (`moat run`), or start `moat mux` \
             for a node with a process, serial or usb link",
            client.node()
        ),
    }
}
