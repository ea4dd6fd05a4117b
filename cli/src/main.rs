//! `moat`: the one command-line tool. Thin: parse arguments, call the
//! library (`moat::…`, `mux_runtime::…`), render the result.

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

mod commands;

#[derive(Parser)]
#[command(
    name = "moat",
    version,
    about = "Build, flash, update and talk to MicroPython satellites"
)]
struct Cli {
    /// Run as if moat was started in DIR (the project is found from there).
    #[arg(short = 'C', global = true, value_name = "DIR")]
    chdir: Option<std::path::PathBuf>,
    /// The project's moat.toml (its folder is the project).
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "chdir")]
    manifest_path: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scaffold a new project.
    Init(commands::init::Args),
    /// Build firmware for the project's nodes.
    Build(commands::build::Args),
    /// List the boards moat knows and whether they can be built here.
    Boards(commands::boards::Args),
    /// Encode and decode wire messages (for reading captured traffic).
    #[command(subcommand)]
    Wire(commands::wire::Command),
    /// Read or change a node's config.
    #[command(subcommand)]
    Cfg(commands::cfg::Command),
    /// Call a command on a node: `moat cmd [NODE] PATH [k=v …]`.
    Cmd(commands::cmd::Args),
    /// A command's doc, parameters and whether it streams: `moat doc [NODE] [PATH]`.
    Doc(commands::doc::Args),
    /// Send a node only the modules that changed (no reflash).
    DiffUpdate(commands::diff_update::Args),
    /// Install a node's built firmware and config (unix: into .moat/nodes/NODE/).
    Flash(commands::flash::Args),
    /// Files on a node.
    #[command(subcommand)]
    Fs(commands::fs::Command),
    /// Run a unix-board node in the foreground.
    Run(commands::run::Args),
    /// Serve every node of the project to clients on one Unix socket.
    Mux(commands::mux::Args),
    /// Show a node's console output live.
    Monitor(commands::monitor::Args),
    /// Node keys: `moat key rotate` gives a node a new one.
    #[command(subcommand)]
    Key(commands::key::Command),
    /// The whole flow in a temporary project: init, build, flash, mux, commands.
    Demo(commands::demo::Args),
    /// Print moat's version (as `--version`).
    Version,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOAT_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // colours only for a person at a terminal, not in a log file
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // `--json` anywhere before `--`: clap has taken it as the verb's flag
    // (a verb without one refuses it), so this is the verb's own setting.
    let json = std::env::args()
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let cli = Cli::parse();
    if let Err(e) = enter(cli.chdir.as_deref(), cli.manifest_path.as_deref()) {
        if json {
            println!("{}", commands::local_json_error(&e));
        }
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Init(a) => commands::init::run(a),
        Command::Build(a) => commands::build::run(a),
        Command::Boards(a) => commands::boards::run(a),
        Command::Wire(c) => commands::wire::run(c),
        Command::Cfg(c) => commands::cfg::run(c),
        // `moat cmd --help` alone: the verb's help (with a path: its doc)
        Command::Cmd(a) if a.help && a.words.is_empty() => {
            let mut moat = Cli::command();
            moat.build(); // names the verb `moat cmd` in its usage line
            moat.find_subcommand_mut("cmd")
                .expect("the cmd verb")
                .print_long_help()
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::BrokenPipe => Ok(()), // `| head`
                    _ => Err(e.into()),
                })
        }
        Command::Cmd(a) => commands::cmd::run(a),
        Command::Doc(a) => commands::doc::run(a),
        Command::Flash(a) => commands::flash::run(a),
        Command::DiffUpdate(a) => commands::diff_update::run(a),
        Command::Fs(c) => commands::fs::run(c),
        Command::Run(a) => commands::run::run(a),
        Command::Mux(a) => commands::mux::run(a),
        Command::Monitor(a) => commands::monitor::run(a),
        Command::Key(c) => commands::key::run(c),
        Command::Demo(a) => commands::demo::run(a),
        Command::Version => {
            println!("moat {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json && !commands::json_error_printed() {
                println!("{}", commands::local_json_error(&e));
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `-C DIR` / `--manifest-path FILE`: every verb then runs in that folder
/// (relative paths of its arguments included), as with `cd DIR && moat …`.
fn enter(dir: Option<&Path>, manifest: Option<&Path>) -> anyhow::Result<()> {
    let dir = match (dir, manifest) {
        (Some(d), _) => d.to_path_buf(),
        (None, Some(m)) => {
            anyhow::ensure!(
                m.file_name().is_some_and(|n| n == "moat.toml"),
                "--manifest-path {}: name the project's moat.toml (or use -C DIR for its folder)",
                m.display()
            );
            anyhow::ensure!(m.is_file(), "--manifest-path {}: no such file", m.display());
            match m.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => return Ok(()),
            }
        }
        (None, None) => return Ok(()),
    };
    std::env::set_current_dir(&dir)
        .with_context(|| format!("-C {}: cannot enter that folder", dir.display()))
}
