//! `moat cmd [NODE] PATH [k=v …]`: call one command on a node and print
//! the result (or stream it with `--stream MS`).

use anyhow::Context;
use futures::StreamExt;
use moat::args;
use moat::client::{self, Client, Target};
use moat::render;
use mux_runtime::error::RemoteError;
use mux_runtime::message::PathElem;
use mux_runtime::Value;

#[derive(clap::Args)]
#[command(
    disable_help_flag = true,
    after_help = "Examples:\n  moat cmd dir\n  moat cmd ping m=hi\n  moat cmd pump sys.info\n  moat cmd cfg.r 'p=[wdt]'\n  moat cmd sys.mem --stream 1000 --count 3\n  moat cmd pump c.add --help     # c.add's doc (as `moat doc pump c.add`)\n\nValues are read as YAML/JSON scalars: 5, 1.5, true, null, hi, \"quoted\", b'\\x00', [1, 2], {a: 1}."
)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// `[NODE] PATH [k=v …]`: the command's dotted path (`sys.info`),
    /// optionally after the node's name, then keyword arguments.
    #[arg(required_unless_present = "help", value_name = "ARGS")]
    pub words: Vec<String>,
    /// Print this help; after a command path, that command's doc instead
    /// (`moat cmd pump c.add --help` is `moat doc pump c.add`).
    #[arg(short = 'h', long = "help")]
    pub help: bool,
    /// Print JSON (one document; with --stream one line per item).
    #[arg(long)]
    pub json: bool,
    /// Stream the command's value every MS milliseconds (Ctrl-C ends).
    #[arg(long, value_name = "MS")]
    pub stream: Option<u32>,
    /// With --stream: stop after K items.
    #[arg(long, value_name = "K", requires = "stream")]
    pub count: Option<u64>,
    /// Reach the node through the MQTT broker at URL (mqtt://HOST[:PORT])
    /// and the mux holding it, without a local mux (docs/mqtt.md).
    #[arg(long, value_name = "URL", conflicts_with_all = ["socket", "direct"])]
    pub mqtt: Option<String>,
    /// With an mqtts:// broker: the CA that signed its certificate (PEM;
    /// default: [mqtt] ca, else the system's CAs).
    #[arg(long, value_name = "FILE", requires = "mqtt")]
    pub mqtt_ca: Option<std::path::PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let parsed = args::parse_cmd(a.target.node.as_deref(), &a.words)?;
    let target = Target {
        node: parsed.node.clone(),
        ..a.target.clone()
    };
    if a.help {
        let project = moat::project::Project::find_from_cwd()?;
        return super::doc::show(&project, &target, &parsed.path, a.json, false);
    }
    client::block_on(async move {
        let client = match &a.mqtt {
            Some(url) => {
                let project = moat::project::Project::find_from_cwd()?;
                let node = client::pick_node(&project, target.node.as_deref())?;
                Client::via_mqtt(&project, &node.name, url, a.mqtt_ca.as_deref())
                    .await?
                    .with_timeout(target.timeout.unwrap_or(client::CALL_TIMEOUT))
            }
            None => Client::connect(&target).await?,
        };
        let outcome = match a.stream {
            None => {
                let result = client.call(&parsed.path, parsed.kwargs).await;
                print_result(&parsed.path, result, a.json)
            }
            Some(ms) => stream(&client, &parsed.path, parsed.kwargs, ms, a.count, a.json).await,
        };
        if a.mqtt.is_some() {
            // Says goodbye on the broker: the serving mux cancels what
            // this session left open.
            client.close().await;
        }
        outcome
    })?
}

/// Prints a result, or the error (as JSON on stdout with `--json`) and
/// fails.
pub fn print_result(
    path: &[PathElem],
    result: Result<Value, RemoteError>,
    json: bool,
) -> anyhow::Result<()> {
    match result {
        Ok(v) if json => println!("{}", render::json_line(&v)),
        Ok(v) => println!("{}", render::human(&v)),
        Err(e) => return Err(remote_failure(path, &e, json)),
    }
    Ok(())
}

/// The error a verb exits with when the node reports `e` for `path`; with
/// `--json` the error is also printed as a JSON document on stdout.
pub fn remote_failure(path: &[PathElem], e: &RemoteError, json: bool) -> anyhow::Error {
    if json {
        super::print_json_error(&render::json_error(e));
    }
    anyhow::anyhow!("{}: {e}", args::show_path(path))
}

/// Streams `path` every `ms` until the node ends it, `count` items came,
/// or Ctrl-C. Dropping the stream sends the cancellation.
async fn stream(
    client: &Client,
    path: &[PathElem],
    kwargs: Value,
    ms: u32,
    count: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let mut items = client.stream(path, kwargs, ms);
    let mut seen = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let outcome = loop {
        if count.is_some_and(|k| seen >= k) {
            break Ok(());
        }
        tokio::select! {
            r = &mut interrupted => {
                r.context("waiting for Ctrl-C")?;
                break Ok(());
            }
            item = items.next() => match item {
                None => break Ok(()),
                Some(Ok(v)) => {
                    seen += 1;
                    if json {
                        println!("{}", render::json_line(&v));
                    } else {
                        println!("{}", render::human(&v));
                    }
                }
                Some(Err(e)) => break Err(remote_failure(path, &e, json)),
            }
        }
    };
    drop(items);
    // Let the link task send the cancellation before the runtime stops.
    settle().await;
    outcome
}

/// Gives the endpoint's writer a moment to send what is queued (a
/// cancellation) before the program ends.
pub async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
}
