//! `moat flash`: put a node's built firmware and its config where it runs.
//!
//! For boards that run on this machine (flash method `local`: `unix`) that
//! is the node's folder `.moat/nodes/<node>/` (see [`moat::local_node`]).
//! Devices are flashed through [`moat::flash`] (espflash, the ESP8266 ROM
//! loader, UF2, probe-rs), then get their `moat.cfg` over the link; see
//! the "Devices" section below.

use anyhow::{bail, Context};
use moat::board::Flash;
use moat::local_node;
use moat::project::Project;

#[derive(clap::Args)]
pub struct Args {
    /// The node to flash (default: every node of the project).
    #[arg(long, short = 'n', value_name = "NODE")]
    pub node: Option<String>,
    /// Print JSON (one object per node).
    #[arg(long)]
    pub json: bool,
    /// Start `moat mux` afterwards (in the foreground): it runs nodes with
    /// a process link and serves every node to clients.
    #[arg(long)]
    pub run: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut project = Project::find_from_cwd()?;
    // A node without a key gets one now (its config carries it).
    for node in project.ensure_keys()? {
        eprintln!("node `{node}`: made a new key in .moat/keys/{node}");
    }
    let nodes = match &a.node {
        Some(name) => vec![moat::client::pick_node(&project, Some(name))?.clone()],
        None => {
            if project.manifest.nodes.is_empty() {
                bail!("the project has no nodes: add a [nodes.NAME] table to moat.toml");
            }
            project.manifest.nodes.clone()
        }
    };
    if a.device.plan {
        return print_plans(&project, &nodes, &a);
    }
    let mut out = Vec::new();
    for node in &nodes {
        let board = project.board_of(node);
        let installed = match &board.flash {
            Flash::Local => local_node::install(&project, node)?,
            Flash::Uf2 { .. } if moat::emulator::rp2040js::is_emulated(&project, node) => {
                out.push(flash_emulated(&project, node, &a)?);
                continue;
            }
            Flash::Espflash { .. }
            | Flash::Esp8266Rom
            | Flash::Uf2 { .. }
            | Flash::ProbeRs { .. } => {
                out.push(flash_device(&project, node, &a)?);
                continue;
            }
        };
        if a.json {
            out.push(serde_json::json!({
                "node": installed.node,
                "board": board.name,
                "method": board.flash.method(),
                "dir": installed.dir,
                "firmware": installed.firmware,
                "firmware_sha256": installed.firmware_sha256,
                "firmware_changed": installed.firmware_changed,
            }));
        } else {
            let what = if installed.firmware_changed {
                "firmware and config installed"
            } else {
                "firmware unchanged, config installed"
            };
            println!("{}: {what} in {}", installed.node, installed.dir.display());
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Array(out));
    }
    if a.run {
        // The mux starts process nodes (and emulators) itself; a local
        // node on a TCP link is a server the mux connects to: it runs
        // here, for as long as the mux does.
        let _nodes = nodes
            .iter()
            .filter(|n| {
                matches!(project.board_of(n).flash, Flash::Local)
                    && matches!(n.link, moat::manifest::Link::Tcp { .. })
            })
            .map(|n| LocalNode::start(&project, n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        return super::mux::run(super::mux::Args {
            socket: None,
            json: a.json,
            ..Default::default()
        });
    }
    Ok(())
}

/// A local node run by `moat flash --run` beside the mux: stopped with
/// SIGINT (a clean end for the node, not a crash) when dropped.
struct LocalNode(std::process::Child);

impl LocalNode {
    fn start(project: &Project, node: &Node) -> anyhow::Result<LocalNode> {
        let mut cmd = local_node::command(project, node)?;
        cmd.stdin(std::process::Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting node `{}`", node.name))?;
        eprintln!("node `{}`: started (pid {})", node.name, child.id());
        Ok(LocalNode(child))
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGINT) };
        for _ in 0..50 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- Devices (flash methods other than `local`) ----------------------------

use indicatif::{ProgressBar, ProgressStyle};
use moat::flash::{self, After, Before, Destination, FlashPlan};
use moat::manifest::Node;
use mux_runtime::{msgpack, Value};
use std::path::PathBuf;

/// Options for flashing devices.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// Print what would be written where, and flash nothing.
    #[arg(long)]
    pub plan: bool,
    /// The device's serial port (default: the node's `port`); any path.
    #[arg(long, value_name = "PATH")]
    pub port: Option<String>,
    /// Baud rate after connecting (espflash: 460800; ESP8266: 115200).
    #[arg(long)]
    pub baud: Option<u32>,
    /// How to enter the ROM loader (`no-reset` for adapters without
    /// DTR/RTS: hold BOOT while resetting by hand).
    #[arg(long, value_enum, default_value_t = Before::DefaultReset)]
    pub before: Before,
    /// What to do after flashing (`no-reset-no-stub`: touch no reset line).
    #[arg(long, value_enum, default_value_t = After::HardReset)]
    pub after: After,
    /// ESP32: flash through the ROM loader, not the RAM stub.
    #[arg(long)]
    pub no_stub: bool,
    /// ESP32: skip the MD5 check after writing.
    #[arg(long)]
    pub no_verify: bool,
    /// ESP32: write regions even when the flash already holds them.
    #[arg(long)]
    pub no_skip: bool,
    /// UF2 boards: write the image to this file instead of the drive.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// UF2 boards: the bootloader drive's mount point (default: searched).
    #[arg(long, value_name = "DIR")]
    pub drive: Option<PathBuf>,
    /// Do not upload `moat.cfg` over the link after flashing.
    #[arg(long)]
    pub no_config: bool,
}

impl DeviceArgs {
    fn options(&self) -> flash::Options {
        flash::Options {
            port: self.port.clone(),
            baud: self.baud,
            before: self.before,
            after: self.after,
            no_stub: self.no_stub,
            no_verify: self.no_verify,
            no_skip: self.no_skip,
            out: self.out.clone(),
            drive: self.drive.clone(),
        }
    }
}

fn print_plans(project: &Project, nodes: &[Node], a: &Args) -> anyhow::Result<()> {
    let opts = a.device.options();
    let plans = nodes
        .iter()
        .map(|n| flash::plan(project, n, &opts))
        .collect::<Result<Vec<FlashPlan>, _>>()?;
    if a.json {
        println!("{}", serde_json::to_string(&plans)?);
        return Ok(());
    }
    for p in &plans {
        println!(
            "{} (board {}, {}): {}",
            p.node,
            p.board,
            p.method,
            describe(&p.destination)
        );
        for w in &p.writes {
            let at = w.offset.map(|o| format!(" at {o:#x}")).unwrap_or_default();
            println!(
                "  {}{at}: {} bytes, sha256 {}",
                w.name,
                w.size,
                &w.sha256[..16]
            );
        }
        println!("  verify: {}", p.verify);
        if let Some(c) = &p.config {
            println!("  then: upload {c} over the link");
        }
    }
    Ok(())
}

fn describe(d: &Destination) -> String {
    match d {
        Destination::Local { dir } => format!("install in {}", dir.display()),
        Destination::Serial {
            port,
            chip,
            baud,
            before,
            after,
        } => format!(
            "{chip} on {port} at {baud} baud (before: {}, after: {})",
            serde_json::to_value(before)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?"),
            serde_json::to_value(after)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
        ),
        Destination::Drive {
            volume,
            drive: Some(d),
        } => format!("{volume} drive at {}", d.display()),
        Destination::Drive {
            volume,
            drive: None,
        } => format!("the mounted {volume} drive"),
        Destination::File { path } => format!("UF2 file {}", path.display()),
        Destination::Probe { chip } => format!("{chip} through a debug probe"),
    }
}

/// Flashes one device node, uploads its config and (ESP8266: no MD5 in
/// the ROM) checks that it runs the build just written.
fn flash_device(project: &Project, node: &Node, a: &Args) -> anyhow::Result<serde_json::Value> {
    let board = project.board_of(node);
    let opts = a.device.options();
    let plan = flash::plan(project, node, &opts)?;
    if !a.json {
        eprintln!(
            "{}: flashing {} ({})",
            node.name,
            describe(&plan.destination),
            plan.method
        );
    }
    let mut bars = Bars::new(a.json);
    let outcome = flash::execute(&plan, board, &opts, &mut bars)
        .map_err(|e| anyhow::anyhow!("node `{}`: {e}", node.name))?;
    drop(bars);
    let to_file = matches!(plan.destination, Destination::File { .. });
    let mut config_uploaded = false;
    let mut build_checked = None;
    if !a.device.no_config && !to_file && plan.config.is_some() {
        let (uploaded, checked) = after_flash(project, node, &plan, a.json).map_err(|e| {
            let n = &node.name;
            if e.is::<WrongBuild>() {
                return anyhow::anyhow!("node `{n}`: the firmware was flashed, but {e}");
            }
            anyhow::anyhow!(
                "node `{n}`: the firmware was flashed, but {e:#}; give it its config with `moat cfg upload --node {n} --repl --port PORT` (its serial console) or, once it is reachable over its link, `moat cfg upload --node {n}`"
            )
        })?;
        config_uploaded = uploaded;
        build_checked = checked;
    }
    if !a.json {
        for (name, result) in &outcome.results {
            println!("{}: {name}: {result}", node.name);
        }
        if config_uploaded {
            println!("{}: config uploaded", node.name);
        }
        match (&outcome.check_after_boot, build_checked) {
            (Some(_), Some(true)) => println!(
                "{}: the node runs the flashed build (module hashes match)",
                node.name
            ),
            (Some(note), None) => println!("{}: not verified: {note}", node.name),
            _ => {}
        }
    }
    Ok(serde_json::json!({
        "node": node.name,
        "board": board.name,
        "method": plan.method,
        "target": outcome.target,
        "results": outcome.results.iter().map(|(n, r)| serde_json::json!({"name": n, "result": r})).collect::<Vec<_>>(),
        "config_uploaded": config_uploaded,
        "build_checked": build_checked,
    }))
}

/// An emulated rpi-pico (`port = "tcp:…"`): the UF2 goes into its flash
/// image; then, unless `--no-config`, the emulator runs just long enough
/// to take the config over its USB link.
fn flash_emulated(project: &Project, node: &Node, a: &Args) -> anyhow::Result<serde_json::Value> {
    use moat::emulator::rp2040js;
    let cache = moat::source::Cache::from_env()?;
    let image = rp2040js::install(project, node, &cache)?;
    let mut config_uploaded = false;
    if !a.device.no_config {
        let mut emu = rp2040js::run_command(project, node, &cache)?
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start the rp2040js emulator: {e}"))?;
        let result = upload_config(project, node, a.json);
        // SIGTERM: the harness writes the flash image back, then exits.
        unsafe { libc::kill(emu.id() as libc::pid_t, libc::SIGTERM) };
        let _ = emu.wait();
        result.map_err(|e| {
            anyhow::anyhow!(
                "node `{}`: the firmware is in {}, but {e:#}",
                node.name,
                image.display()
            )
        })?;
        config_uploaded = true;
    }
    if !a.json {
        println!("{}: firmware written to {}", node.name, image.display());
        if config_uploaded {
            println!("{}: config uploaded", node.name);
        }
    }
    Ok(serde_json::json!({
        "node": node.name,
        "board": project.board_of(node).name,
        "method": "rp2040js",
        "target": image,
        "config_uploaded": config_uploaded,
    }))
}

/// Gives a freshly flashed emulated node its config over its own link. It
/// boots with the built-in default (a stdio link, no apps, so no `fs`): the
/// config goes in through the built-in `cfg` app (write, save), then a soft
/// reboot brings up its apps, and `fs` writes the fallback config. Stopping
/// an emulator looks like a crash to the node, so its fallback config is the
/// full config, and the crash marker of this run is removed.
fn upload_config(project: &Project, node: &Node, json: bool) -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    let config = node.config();
    let bytes = msgpack::to_vec(&config);
    moat::client::block_on(async {
        let mut client = moat::client::Client::direct(project, node)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach it to upload the config: {e:#}"))?;
        let w = Value::map([("p", Value::Array(vec![])), ("d", config)]);
        client
            .call_names(&["cfg", "w"], w)
            .await
            .map_err(|e| anyhow::anyhow!("cfg.w: {e}"))?;
        client
            .call_names(&["cfg", "s"], Value::Map(vec![]))
            .await
            .map_err(|e| anyhow::anyhow!("cfg.s: {e}"))?;
        let _ = client
            .call_names(&["sys", "boot"], Value::map([("m", Value::from(1))]))
            .await;
        // Back with its apps (a request sent while it restarts may be lost).
        let t0 = Instant::now();
        loop {
            let probe = client.call_names(&["fs", "stat"], Value::map([("p", Value::from(""))]));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("it did not come back with an `fs` app after its soft reboot");
            }
        }
        super::fs::write_file(&mut client, local_node::FALLBACK_FILE, &bytes, json).await?;
        client
            .call_names(&["fs", "rm"], Value::map([("p", Value::from("moat.run"))]))
            .await
            .map_err(|e| anyhow::anyhow!("fs.rm moat.run: {e}"))?;
        client.close().await;
        Ok(())
    })?
}

/// The device runs another build than the one just flashed (frozen module
/// hashes differ from the build record).
#[derive(Debug, thiserror::Error)]
#[error("it does not run the build just flashed (frozen modules differ: {0}): the write failed unnoticed, flash again")]
struct WrongBuild(String);

/// Gives a just-flashed device its config, and where the flash method
/// could not verify (ESP8266) checks that it runs the build just written
/// (its frozen module hashes against the build record). Returns
/// (uploaded, build checked).
///
/// First over MicroPython's raw REPL on the serial port: a fresh device
/// has no config yet and talks on its console, not on the link the
/// manifest names ([`moat::update::config_repl`]). When no REPL answers
/// there (no serial port, or the port is not the console), over the link.
fn after_flash(
    project: &Project,
    node: &Node,
    plan: &FlashPlan,
    json: bool,
) -> anyhow::Result<(bool, Option<bool>)> {
    let record = moat::build::record::Record::load(
        &local_node::build_dir(project, &node.name).join("record.json"),
    )
    .filter(|_| plan.method == "esp8266-rom");
    let repl_port = match &plan.destination {
        Destination::Serial { port, .. } => Some(port.clone()),
        // UF2, probe: the device's own USB serial port, once it is back
        _ => node.port.clone().filter(|p| p.starts_with('/')),
    };
    let mut repl_failed = None;
    if let Some(port) = &repl_port {
        let patience = std::time::Duration::from_secs(8);
        match moat::update::config_repl::install(port, node, record.as_ref(), patience) {
            Ok(installed) => {
                let checked = match installed.differing_modules {
                    Some(d) if !d.is_empty() => return Err(WrongBuild(d.join(", ")).into()),
                    Some(_) => Some(true),
                    None => None,
                };
                return Ok((true, checked));
            }
            Err(e) => repl_failed = Some(format!("over the REPL on {port}: {e:#}")),
        }
    }
    over_link(project, node, record.as_ref(), json).map_err(|e| match repl_failed {
        Some(repl) => anyhow::anyhow!("{repl}; over its link: {e:#}"),
        None => e,
    })
}

/// [`after_flash`] over the node's link: `moat.cfg` and the fallback
/// config through `fs`, then the module hashes (`sys.hash`) against
/// `record`.
fn over_link(
    project: &Project,
    node: &Node,
    record: Option<&moat::build::record::Record>,
    json: bool,
) -> anyhow::Result<(bool, Option<bool>)> {
    let config = node.config();
    let cfg = msgpack::to_vec(&config);
    let fallback = msgpack::to_vec(&local_node::fallback_config(&config));
    moat::client::block_on(async {
        let mut client = moat::client::Client::direct(project, node)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach it to upload the config: {e:#}"))?;
        super::fs::write_file(&mut client, local_node::CONFIG_FILE, &cfg, json).await?;
        super::fs::write_file(&mut client, local_node::FALLBACK_FILE, &fallback, json).await?;
        let mut checked = None;
        if let Some(rec) = record {
            let hashes = client
                .call_names(&["sys", "hash"], Value::Map(vec![]))
                .await
                .map_err(|e| anyhow::anyhow!("cannot read its module hashes (sys.hash): {e}"))?;
            for (module, hex) in &rec.inputs.modules {
                let want = Value::Bin(hex::decode(hex).unwrap_or_default());
                if hashes.get(module.as_str()) != Some(&want) {
                    return Err(WrongBuild(module.clone()).into());
                }
            }
            checked = Some(true);
        }
        client.close().await;
        Ok((true, checked))
    })?
}

/// indicatif bars for [`flash::Progress`] (hidden with `--json`).
struct Bars {
    quiet: bool,
    bar: Option<ProgressBar>,
    label: String,
}

impl Bars {
    fn new(quiet: bool) -> Bars {
        Bars {
            quiet,
            bar: None,
            label: String::new(),
        }
    }
}

impl flash::Progress for Bars {
    fn start(&mut self, label: &str, total: u64) {
        self.label = label.to_owned();
        if self.quiet {
            return;
        }
        let bar = ProgressBar::new(total.max(1));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(label.to_owned());
        self.bar = Some(bar);
    }

    fn set(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    fn finish(&mut self, outcome: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if !self.quiet {
            eprintln!("{}: {outcome}", self.label);
        }
    }

    fn note(&mut self, message: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(message),
            None => eprintln!("{message}"),
        }
    }
}
