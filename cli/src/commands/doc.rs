//! `moat doc [NODE] [PATH]`: a command's doc, parameters and whether it
//! streams, for the firmware the node runs (`moat::doc`); `moat doc NODE`
//! lists every command with its summary, `moat doc mux [CMD]` the mux's.

use moat::args;
use moat::client::{self, Client, Target, MUX_APP};
use moat::doc::{self, NodeState};
use moat::project::Project;
use mux_runtime::message::PathElem;
use std::time::Duration;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  moat doc                 # every command of the only node\n  moat doc c.add           # one command\n  moat doc pump sys.info\n  moat doc mux ls          # the mux's own commands\n  moat cmd pump c.add --help   # the same as moat doc pump c.add\n\nDocs are read from the sources at `moat build` (docstrings, else the comments\nopening a function) and kept in .moat/build/NODE/docs.json, never on the node.\nThe node is asked which modules it runs (sys.up.mods); without it the latest\nbuild is documented, and the output says so."
)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// `[NODE] [PATH]`: the node (default: the project's only node) and the
    /// command's dotted path (`sys.info`); an app's path, or none, lists
    /// the commands below it.
    #[arg(value_name = "ARGS", num_args = 0..=2)]
    pub words: Vec<String>,
    /// Print one JSON document (the shape is in `moat::doc`).
    #[arg(long)]
    pub json: bool,
    /// Do not ask the node: document its latest build.
    #[arg(long)]
    pub offline: bool,
}

/// How long `moat doc` waits for the node before using the build's docs.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(a: Args) -> anyhow::Result<()> {
    let project = Project::find_from_cwd()?;
    let is_node = |w: &str| w == MUX_APP || project.node(w).is_some();
    let (node, path) = match (a.words.as_slice(), a.target.node.as_deref()) {
        ([], n) => (n.map(str::to_owned), vec![]),
        ([w], None) if is_node(w) => (Some(w.clone()), vec![]),
        ([w], n) => (n.map(str::to_owned), args::parse_path(w)?),
        ([n, p], None) => (Some(n.clone()), args::parse_path(p)?),
        ([_, _], Some(flag)) => anyhow::bail!(
            "the node is already given with --node {flag}; write `moat doc --node {flag} PATH`"
        ),
        _ => unreachable!("clap takes at most two words"),
    };
    let target = Target {
        node,
        ..a.target.clone()
    };
    show(&project, &target, &path, a.json, a.offline)
}

/// Prints the doc of `path` on the node `target` names (also `moat cmd
/// … --help`).
pub fn show(
    project: &Project,
    target: &Target,
    path: &[PathElem],
    json: bool,
    offline: bool,
) -> anyhow::Result<()> {
    let d = if target.node.as_deref() == Some(MUX_APP) {
        doc::describe_mux(path)?
    } else {
        let node = client::pick_node(project, target.node.as_deref())?
            .name
            .clone();
        let state = if offline {
            NodeState {
                apps: doc::configured_apps(project, &node),
                ..NodeState::default()
            }
        } else {
            client::block_on(ask(project, &node, target))?
        };
        doc::describe(project, &node, path, &state)?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{}", doc::render(&d));
    }
    Ok(())
}

/// What the node runs; an unreachable node is a note, not an error.
async fn ask(project: &Project, node: &str, target: &Target) -> NodeState {
    let target = Target {
        node: Some(node.to_owned()),
        timeout: Some(target.timeout.unwrap_or(ASK_TIMEOUT)),
        ..target.clone()
    };
    let asked = async {
        let client = Client::connect_in(Some(project), &target).await?;
        doc::query(project, node, &client).await
    };
    match tokio::time::timeout(target.timeout.unwrap_or(ASK_TIMEOUT) * 2, asked).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => unreached(project, node, format!("{e:#}")),
        Err(_) => unreached(project, node, "no answer".to_owned()),
    }
}

fn unreached(project: &Project, node: &str, why: String) -> NodeState {
    // the first line is enough for a note
    let why = why.lines().next().unwrap_or("").to_owned();
    NodeState {
        table: None,
        apps: doc::configured_apps(project, node),
        unreached: Some(why),
    }
}
