//! `moat diff-update`: send a node only the modules that changed since its
//! firmware was built (or since the last diff-update), atomically, and
//! restart what uses them. The work is in `moat::update`.

use indicatif::{ProgressBar, ProgressStyle};
use moat::client::{self, Target};
use moat::project::Project;
use moat::update::apply::{self, Observer, Options, Report};
use moat::update::plan::{Action, Plan};
use std::io::IsTerminal;
use std::sync::Mutex;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Show the plan, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object: {node, uploaded, deleted, unchanged, bytes_sent, …}.
    #[arg(long)]
    pub json: bool,
    /// Upload modules compiled by the firmware's mpy-cross (.mpy).
    #[arg(long)]
    pub mpy: bool,
    /// Reboot the node afterwards instead of restarting the affected apps.
    #[arg(long)]
    pub reboot: bool,
}

/// The plan as a table and a bar for the bytes (stderr, terminal only).
struct Human {
    bar: Mutex<Option<ProgressBar>>,
    terminal: bool,
    quiet: bool,
}

fn action_text(a: &Action) -> String {
    match a {
        Action::Unchanged => "-".into(),
        Action::Upload { path, delete } if delete.is_empty() => format!("upload {path}"),
        Action::Upload { path, delete } => format!("upload {path}, delete {}", delete.join(" ")),
        Action::Delete { paths } => format!("delete {}", paths.join(" ")),
        Action::Reflash => "needs a reflash".into(),
    }
}

/// The plan's table: every module that changes, then a count of the rest.
pub fn plan_table(plan: &Plan) -> String {
    let rows: Vec<[String; 4]> = plan
        .items
        .iter()
        .filter(|i| i.action != Action::Unchanged)
        .map(|i| {
            [
                i.module.clone(),
                i.now.to_string(),
                action_text(&i.action),
                i.why.to_owned(),
            ]
        })
        .collect();
    let mut out = String::new();
    if !rows.is_empty() {
        let head = ["module", "node has", "action", "why"].map(str::to_owned);
        let mut w = [0; 4];
        for r in std::iter::once(&head).chain(&rows) {
            for (k, c) in r.iter().enumerate() {
                w[k] = w[k].max(c.chars().count());
            }
        }
        for r in std::iter::once(&head).chain(&rows) {
            let line = format!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2]
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    for p in &plan.cleanup {
        out.push_str(&format!("remove leftover {p}\n"));
    }
    out.push_str(&format!("{} modules unchanged\n", plan.unchanged()));
    out
}

impl Observer for Human {
    fn planned(&self, plan: &Plan, bytes: u64) {
        if self.quiet {
            return;
        }
        print!("{}", plan_table(plan));
        if bytes > 0 && self.terminal {
            let bar = ProgressBar::new(bytes);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
        }
    }

    fn sent(&self, n: u64) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            b.inc(n);
        }
    }

    fn step(&self, what: &str) {
        if self.quiet {
            return;
        }
        match self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(b) => b.set_message(what.to_owned()),
            None if self.terminal => eprintln!("{what}"),
            None => {}
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let project = Project::find_from_cwd()?;
    let node = client::pick_node(&project, a.target.node.as_deref())?.clone();
    let opts = Options {
        dry_run: a.dry_run,
        mpy: a.mpy,
        reboot: a.reboot,
    };
    let human = Human {
        bar: Mutex::new(None),
        terminal: std::io::stderr().is_terminal(),
        quiet: a.json,
    };
    let result = client::block_on(apply::run(&project, &node, &a.target, opts, &human))?;
    if let Some(b) = human.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
        b.finish_and_clear();
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            if a.json {
                let mut doc = super::local_json_error(&e);
                doc["node"] = node.name.clone().into();
                super::print_json_error(&doc);
            }
            return Err(e);
        }
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", summary(&report));
    }
    Ok(())
}

fn summary(r: &Report) -> String {
    if r.dry_run {
        return format!(
            "{}: would upload {}, delete {} (dry run: nothing sent)",
            r.node,
            r.uploaded.len(),
            r.deleted.len()
        );
    }
    if r.uploaded.is_empty() && r.deleted.is_empty() && r.cleaned.is_empty() {
        return format!("{}: up to date", r.node);
    }
    let mut s = format!(
        "{}: uploaded {}, deleted {}; {} bytes sent ({} bytes of files)",
        r.node,
        r.uploaded.len(),
        r.deleted.len(),
        r.bytes_sent,
        r.file_bytes
    );
    match r.restart.as_str() {
        "apps" if !r.apps.is_empty() => s.push_str(&format!("; restarted {}", r.apps.join(", "))),
        "soft-reset" => s.push_str("; runtime restarted"),
        "reboot" => s.push_str("; rebooted"),
        _ => {}
    }
    if r.retries > 0 {
        s.push_str(&format!("; {} damaged uploads sent again", r.retries));
    }
    s
}
