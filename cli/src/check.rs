//! Checks before anything reaches a node: the project's own modules
//! compile with the firmware's mpy-cross, and every `apps` entry of a
//! node's config names a module the firmware freezes and a class that
//! module defines. `moat build` runs them before the port's make, `moat
//! diff-update` before it uploads, so a typo is an error naming the
//! project file and line (or the moat.toml entry), not a node that boots
//! without its app.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::manifest::Node;

/// One module the firmware freezes (or would).
pub struct Frozen<'a> {
    /// Dotted name.
    pub name: &'a str,
    pub source: &'a Path,
}

/// A module's source read from its file.
pub fn read_file(m: &Frozen) -> anyhow::Result<String> {
    std::fs::read_to_string(m.source).with_context(|| format!("cannot read {}", m.source.display()))
}

/// Compiles each of `files` (the project's own modules) with `mpy_cross`,
/// run in `root` so a message names the file as the project does; fails on
/// the first that does not compile.
pub fn compile(mpy_cross: &Path, root: &Path, files: &[&Path]) -> anyhow::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let out = tempfile::tempdir().context("cannot create a temporary folder")?;
    for (k, file) in files.iter().enumerate() {
        let shown = file.strip_prefix(root).unwrap_or(file);
        let run = Command::new(mpy_cross)
            .current_dir(root)
            .arg("-o")
            .arg(out.path().join(format!("{k}.mpy")))
            .arg(shown)
            .output()
            .with_context(|| format!("cannot run {}", mpy_cross.display()))?;
        if !run.status.success() {
            let err = String::from_utf8_lossy(&run.stderr);
            bail!(
                "{}; nothing was sent to a node (checked with the firmware's mpy-cross)",
                compile_error(&err, shown)
            );
        }
    }
    Ok(())
}

/// `FILE:LINE: SyntaxError: …` from mpy-cross's traceback (`File "F",
/// line N` then the error), or its whole output when it says otherwise.
fn compile_error(stderr: &str, file: &Path) -> String {
    let line = stderr.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("File \"")?;
        let (_, after) = rest.split_once("\", line ")?;
        after
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse::<u32>()
            .ok()
    });
    let what = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("does not compile")
        .trim();
    match line {
        Some(n) => format!("{}:{n}: {what}", file.display()),
        None => format!("{}: {}", file.display(), stderr.trim()),
    }
}

/// Every `apps` entry of `node` names a module in `frozen` (or, for a node
/// that runs on this machine, a file in its folder `local`) that defines
/// its class (`read` gives a frozen module's source text).
pub fn apps(
    node: &Node,
    frozen: &[Frozen],
    local: Option<&Path>,
    read: impl Fn(&Frozen) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    for app in &node.apps {
        let file = format!("{}.py", app.module.replace('.', "/"));
        let here = local.map(|d| d.join(&file)).filter(|f| f.is_file());
        let found = frozen.iter().find(|m| m.name == app.module);
        let text = match (found, here) {
            // The node's own folder comes first on its sys.path.
            (_, Some(f)) => read_file(&Frozen {
                name: &app.module,
                source: &f,
            })?,
            (Some(m), None) => read(m)?,
            (None, None) => bail!(
                "{}: no module `{}` goes into node `{}`'s firmware (not in the node runtime \
                 nor in the project's [apps] paths){}; add {file} to an app folder or fix the name",
                app.at,
                app.module,
                node.name,
                crate::manifest::did_you_mean(&app.module, frozen.iter().map(|m| m.name)),
            ),
        };
        if !defines(&text, &app.class) {
            bail!(
                "{}: module `{}` defines no `{}` at its top level; fix the class name{}",
                app.at,
                app.module,
                app.class,
                did_you_mean_class(&text, &app.class)
            );
        }
    }
    Ok(())
}

/// ` (did you mean `X`?)` for a class of `source` close to `name`.
fn did_you_mean_class(source: &str, name: &str) -> String {
    let classes: Vec<&str> = source
        .lines()
        .filter_map(|l| l.strip_prefix("class "))
        .filter_map(|r| r.trim_start().split(['(', ':', ' ']).next())
        .collect();
    crate::manifest::did_you_mean(name, classes.into_iter())
}

/// Whether `source` binds `name` at its top level: a class, a function (a
/// factory: the node calls what it finds), an assignment or an import (a
/// re-export). A reading of lines, not a parser: it may
/// accept what does not run, never refuse what does.
fn defines(source: &str, name: &str) -> bool {
    let word = |s: &str| {
        s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == name)
    };
    source.lines().any(|l| {
        if let Some(rest) = l.strip_prefix("class ").or_else(|| l.strip_prefix("def ")) {
            return rest.trim_start().split(['(', ':', ' ']).next() == Some(name);
        }
        if let Some((lhs, _)) = l.split_once('=') {
            if !l.starts_with([' ', '\t']) && word(lhs) && !lhs.contains(['(', '[']) {
                return true;
            }
        }
        (l.starts_with("from ") || l.starts_with("import ")) && word(l)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceback_becomes_file_line_and_error() {
        let e = "Traceback (most recent call last):\n  File \"apps/bad.py\", line 5\nSyntaxError: invalid syntax\n";
        assert_eq!(
            compile_error(e, Path::new("apps/bad.py")),
            "apps/bad.py:5: SyntaxError: invalid syntax"
        );
        assert_eq!(
            compile_error("out of memory\n", Path::new("a.py")),
            "a.py: out of memory"
        );
    }

    #[test]
    fn a_class_assignment_or_import_defines_a_name() {
        let src = "import x\nfrom app import App as Base\n\nclass Pump(Base):\n    Inner = 1\nAlias = Pump\n";
        assert!(defines(src, "Pump"));
        assert!(defines(src, "Alias"));
        assert!(defines(src, "Base"));
        assert!(!defines(src, "Inner"), "not at the top level");
        assert!(!defines(src, "Pum"));
        assert!(defines("class Thing:\n    pass\n", "Thing"));
        assert!(defines("def Thing(cfg, name, root):\n    pass\n", "Thing"));
        assert!(!defines("def make():\n    Thing = 1\n", "Thing"));
    }
}
