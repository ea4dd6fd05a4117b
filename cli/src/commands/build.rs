//! `moat build`: firmware for the project's nodes (see `moat::build`).

use indicatif::{ProgressBar, ProgressStyle};
use moat::build::progress::{is_step_line, Progress};
use moat::build::{self, Builder};
use moat::project::Project;
use moat::source::Cache;
use std::io::IsTerminal;

#[derive(clap::Args)]
#[command(after_help = moat::toolchains::HELP)]
pub struct Args {
    /// Build only this node.
    #[arg(long, conflicts_with = "board")]
    node: Option<String>,
    /// Build the nodes on this board, or a generic firmware for it when
    /// the project has none.
    #[arg(long)]
    board: Option<String>,
    /// Print one JSON object per node (node, board, firmware,
    /// firmware_sha256, modules, rebuilt) on stdout; stage notes still go
    /// to stderr, without a progress bar.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut project = Project::find_from_cwd()?;
    // The selection is checked before anything is made.
    build::select(&project, args.node.as_deref(), args.board.as_deref())?;
    // A node without a key gets one now (its config carries it).
    for node in project.ensure_keys()? {
        eprintln!("node `{node}`: made a new key in .moat/keys/{node}");
    }
    let targets = build::select(&project, args.node.as_deref(), args.board.as_deref())?;
    let mut builder = Builder::new(&project, Cache::from_env()?)?;
    let mut bar = Bar::new(!args.json && std::io::stderr().is_terminal());
    for target in &targets {
        let out = builder.build(target, &mut bar)?;
        if args.json {
            println!("{}", out.to_json());
        } else {
            let what = if out.rebuilt { "built" } else { "up to date:" };
            println!(
                "{}: {what} {} ({} modules, sha256 {})",
                out.target,
                out.firmware.display(),
                out.modules.len(),
                &out.firmware_sha256[..16]
            );
        }
    }
    Ok(())
}

/// Progress on stderr: a bar fed by make's step lines (on a terminal,
/// without `--json`), plain stage lines otherwise.
struct Bar {
    tty: bool,
    bar: Option<ProgressBar>,
}

impl Bar {
    fn new(tty: bool) -> Self {
        Bar { tty, bar: None }
    }
}

impl Progress for Bar {
    fn note(&mut self, target: &str, message: &str) {
        match &self.bar {
            Some(b) => b.println(format!("{target}: {message}")),
            None => eprintln!("{target}: {message}"),
        }
    }

    fn compile_start(&mut self, target: &str, expected_steps: u64) {
        if !self.tty {
            eprintln!("{target}: compiling (log: .moat/build/{target}/build.log)");
            return;
        }
        let b = ProgressBar::new(expected_steps.max(1));
        b.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {wide_msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        b.set_prefix(format!("{target}: compiling"));
        self.bar = Some(b);
    }

    fn compile_line(&mut self, line: &str) {
        if let Some(b) = &self.bar {
            if is_step_line(line) {
                if b.position() + 1 >= b.length().unwrap_or(0) {
                    b.set_length(b.position() + 2);
                }
                b.inc(1);
                b.set_message(line.to_string());
            }
        }
    }

    fn compile_end(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
