//! The mux's own commands: at the root (`dir`, `ping`) and in its `mux`
//! app (`ls`, `console`, `info`, `doc`, `dir`, `ping`), documented in
//! [`MUX_DOCS`] (what `moat doc mux CMD` and `mux.doc` answer).

use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, BoxFuture, FutureExt};
use futures::stream::{self, BoxStream, StreamExt};

use super::route::{no_path, MUX_APP};
use super::Core;
use crate::error::{RemoteError, WellKnown};
use crate::message::{Path, PathElem};
use crate::value::Value;

const MUX_COMMANDS: [&str; 6] = ["dir", "info", "ls", "console", "doc", "ping"];
const MUX_STREAMS: [&str; 2] = ["ls", "console"];

/// One command of the `mux` app, documented (the mux runs no Python to
/// read docs from: this table is its source).
#[derive(Clone, Copy, Debug)]
pub struct MuxCommandDoc {
    pub name: &'static str,
    pub doc: &'static str,
    /// `(name, default as source text)`; `None`: required.
    pub params: &'static [(&'static str, Option<&'static str>)],
    /// Has a stream of its own (else it is called every `r` ms).
    pub stream: bool,
}

/// The `mux` app's commands, documented.
pub const MUX_DOCS: [MuxCommandDoc; 6] = [
    MuxCommandDoc {
        name: "dir",
        doc: "The mux app's commands: {c: [commands], s: [streams]}.",
        params: &[],
        stream: false,
    },
    MuxCommandDoc {
        name: "info",
        doc: "The mux: {project, socket, clients, nodes, v: version, mqtt: broker state or None}.",
        params: &[],
        stream: false,
    },
    MuxCommandDoc {
        name: "ls",
        doc: "Every node with its link: {node: {state, kind, target, bytes_in, bytes_out, \
              messages_in, messages_out, console_bytes, reconnects, failures, …}}; with a \
              broker also the nodes other muxes hold.",
        params: &[],
        stream: true,
    },
    MuxCommandDoc {
        name: "console",
        doc: "The console output captured from node `n` (bytes); streamed: what is held, \
              then each new run of bytes.",
        params: &[("n", Some("the only node"))],
        stream: true,
    },
    MuxCommandDoc {
        name: "doc",
        doc: "The doc of command path `p` ([node, ...path], [node] lists its commands, \
              [\"mux\", cmd] these): what `moat doc --json` prints, for the firmware the node \
              runs. Needs a mux started by `moat mux` (it reads the project's build docs).",
        params: &[("p", None)],
        stream: false,
    },
    MuxCommandDoc {
        name: "ping",
        doc: "Echo: -> {m: m}.",
        params: &[("m", Some("None"))],
        stream: false,
    },
];

/// Answers `mux.doc`: `d` is the request's data (`{p: [node, …path]}`).
/// Installed by whoever starts the mux with the project's docs at hand
/// (`moat mux`); a mux without one answers `_NiErr`.
pub type DocHandler =
    Arc<dyn Fn(Value) -> BoxFuture<'static, Result<Value, RemoteError>> + Send + Sync>;

fn strs(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

/// `ping(m)` → `{m}`.
fn ping(data: &Value) -> Value {
    Value::map([("m", data.get("m").cloned().unwrap_or(Value::Nil))])
}

/// A root command: `dir` lists the nodes and the mux app, `ping` echoes.
pub fn root(core: &Core, command: &str, data: &Value) -> Result<Value, RemoteError> {
    match command {
        "dir" => {
            let mut apps: Vec<(String, Value)> = core
                .node_names()
                .map(|n| (n.to_owned(), Value::from("node")))
                .collect();
            if let Some(bridge) = core.bridge() {
                for name in bridge.remote_names() {
                    apps.push((name, Value::from("node")));
                }
            }
            apps.push((MUX_APP.to_owned(), Value::from("mux")));
            Ok(Value::map([
                ("c", strs(&super::route::ROOT_COMMANDS)),
                ("d", Value::map(apps)),
            ]))
        }
        _ => Ok(ping(data)),
    }
}

/// Whether `rest` (the path after `mux`) is the console command.
pub fn is_console(rest: &Path) -> bool {
    matches!(rest.as_slice(), [PathElem::Name(c)] if c == "console")
}

/// A command of the `mux` app.
pub fn call(
    core: &Arc<Core>,
    rest: &Path,
    data: &Value,
) -> BoxFuture<'static, Result<Value, RemoteError>> {
    let command = match rest.as_slice() {
        [PathElem::Name(c)] => c.as_str(),
        _ => "",
    };
    let result = match command {
        "dir" => Ok(Value::map([
            ("c", strs(&MUX_COMMANDS)),
            ("s", strs(&MUX_STREAMS)),
        ])),
        "ls" => Ok(ls(core)),
        "info" => Ok(Value::map([
            ("project", Value::from(core.project.as_str())),
            ("socket", Value::from(core.socket.display().to_string())),
            ("clients", Value::from(core.client_count() as u64)),
            ("nodes", Value::from(core.nodes().len() as u64)),
            ("v", Value::from(env!("CARGO_PKG_VERSION"))),
            ("mqtt", core.bridge().map_or(Value::Nil, |b| b.info())),
        ])),
        "ping" => Ok(ping(data)),
        "doc" => {
            return match core.doc.clone() {
                Some(h) => h(data.clone()),
                None => future::ready(Err(RemoteError::well_known(
                    WellKnown::NotImplemented,
                    vec![Value::from(
                        "mux.doc: this mux has no project docs (start it with `moat mux`)",
                    )],
                )))
                .boxed(),
            }
        }
        "console" => console_node(core, data).map(|n| {
            let (bytes, _) = n.console.since(0);
            Value::Bin(bytes)
        }),
        _ => {
            let mut full = vec![PathElem::Name(MUX_APP.into())];
            full.extend(rest.iter().cloned());
            Err(no_path(&full, "the mux app has no such command"))
        }
    };
    future::ready(result).boxed()
}

/// `mux.ls`: every node with its link state and counters.
fn ls(core: &Core) -> Value {
    let nodes = core.nodes().iter().map(|n| {
        let state = n.link.state();
        let stats = n.link.stats();
        let mut info = vec![
            ("state", Value::from(state.name())),
            ("kind", Value::from(n.link.spec().kind())),
            ("target", Value::from(n.link.spec().target())),
            ("bytes_in", Value::from(stats.bytes_in)),
            ("bytes_out", Value::from(stats.bytes_out)),
            ("messages_in", Value::from(stats.messages_in)),
            ("messages_out", Value::from(stats.messages_out)),
            ("console_bytes", Value::from(stats.console_bytes_in)),
            ("reconnects", Value::from(stats.reconnects)),
            ("failures", Value::from(stats.failures)),
        ];
        if n.link.authenticates() {
            info.push(("auth_ok", Value::from(stats.auth_ok)));
            info.push(("auth_dropped", Value::from(stats.auth_dropped)));
            info.push(("auth_failed", Value::from(stats.auth_failed)));
            if let Some(peer) = n.link.peer() {
                if let Some(m) = peer.max_message {
                    info.push(("m", Value::from(m)));
                }
                info.push(("encrypted", Value::from(peer.encrypted)));
                if peer.key_index > 0 {
                    // A rotation was interrupted after the node got its new key.
                    info.push(("auth_key", Value::from("pending")));
                }
            }
        }
        if let crate::link::LinkState::Down(why) = &state {
            info.push(("why", Value::from(why.as_str())));
        }
        if let Some(pid) = n.link.pid() {
            info.push(("pid", Value::from(pid)));
        }
        if let Some(t) = n.watchdog {
            info.push(("wdt", Value::from(t.as_secs_f64())));
        }
        if let Some(bridge) = core.bridge() {
            info.push(("mux", Value::from(bridge.session())));
        }
        (n.name.clone(), Value::map(info))
    });
    let mut all: Vec<(String, Value)> = nodes.collect();
    // Nodes other muxes hold, as their retained states say.
    if let Some(bridge) = core.bridge() {
        for r in bridge.remote_nodes() {
            let s = &r.state;
            let mut info = vec![
                ("state", Value::from(if s.up { "up" } else { "down" })),
                ("kind", Value::from("mqtt")),
                ("target", Value::from(format!("mux {}", s.mux))),
                ("mux", Value::from(s.mux.as_str())),
            ];
            let extra = [("board", &s.board), ("fw", &s.fw), ("why", &s.why)];
            for (k, v) in extra {
                if let Some(v) = v {
                    info.push((k, Value::from(v.as_str())));
                }
            }
            all.push((r.name, Value::map(info)));
        }
    }
    Value::map(all)
}

/// The node named by the `n` argument, or the only node.
fn console_node<'a>(core: &'a Core, data: &Value) -> Result<&'a super::NodeEntry, RemoteError> {
    let names: Vec<&str> = core.node_names().collect();
    let bad = |why: String| RemoteError::well_known(WellKnown::Value, vec![Value::from(why)]);
    match data.get("n") {
        Some(Value::Str(name)) => core
            .node(name)
            .ok_or_else(|| bad(format!("no node `{name}`; nodes: {}", names.join(", ")))),
        Some(other) => Err(bad(format!(
            "`n` must be a node name, not {}",
            other.type_name()
        ))),
        None if names.len() == 1 => Ok(&core.nodes()[0]),
        None => Err(bad(format!(
            "several nodes: name one with n=…; nodes: {}",
            names.join(", ")
        ))),
    }
}

/// `mux.console` streamed: first what the ring holds, then each new run
/// of bytes, at most one item every `every_ms`.
pub fn console_stream(
    core: &Arc<Core>,
    data: &Value,
    every_ms: u32,
) -> BoxStream<'static, Result<Value, RemoteError>> {
    let node = match console_node(core, data) {
        Ok(n) => n.console.clone(),
        Err(e) => return stream::once(future::ready(Err(e))).boxed(),
    };
    let pause = Duration::from_millis(u64::from(every_ms));
    stream::unfold((node, None::<u64>), move |(node, offset)| async move {
        let offset = match offset {
            // First item: everything held, even if empty.
            None => {
                let (bytes, at) = node.since(0);
                return Some((Ok(Value::Bin(bytes)), (node, Some(at))));
            }
            Some(at) => at,
        };
        tokio::time::sleep(pause).await;
        loop {
            // Register before looking, so a push in between wakes us.
            let (bytes, at) = {
                let changed = node.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let found = node.since(offset);
                if found.0.is_empty() {
                    changed.await;
                    continue;
                }
                found
            };
            return Some((Ok(Value::Bin(bytes)), (node, Some(at))));
        }
    })
    .boxed()
}
