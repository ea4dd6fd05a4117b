//! External programs moat drives (apt-get, make, git, tar, python3): finding
//! them, saying what to install when one is missing, and running them with
//! their output kept in a log whose tail is shown on failure.

use anyhow::{bail, Context};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A program moat needs, with the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
    pub purpose: &'static str,
}

pub const APT_GET: Tool = Tool {
    program: "apt-get",
    package: "apt",
    purpose: "fetch the MicroPython source package",
};
pub const TAR: Tool = Tool {
    program: "tar",
    package: "tar",
    purpose: "unpack the MicroPython source",
};
pub const XZ: Tool = Tool {
    program: "xz",
    package: "xz-utils",
    purpose: "unpack the MicroPython source (.tar.xz)",
};
pub const MAKE: Tool = Tool {
    program: "make",
    package: "make",
    purpose: "build MicroPython",
};
pub const GCC: Tool = Tool {
    program: "gcc",
    package: "build-essential",
    purpose: "compile mpy-cross and the unix port",
};
pub const GIT: Tool = Tool {
    program: "git",
    package: "git",
    purpose: "clone a MicroPython tree given as `git` + `rev`",
};
pub const PYTHON3: Tool = Tool {
    program: "python3",
    package: "python3",
    purpose: "run MicroPython's build scripts",
};
pub const DPKG: Tool = Tool {
    program: "dpkg",
    package: "dpkg",
    purpose: "unpack Debian binary packages holding SDK sources",
};

/// A missing program, with what to install.
#[derive(Debug, thiserror::Error)]
#[error("`{program}` not found on PATH (needed to {purpose}); install it, e.g. `sudo apt-get install {package}`")]
pub struct MissingTool {
    pub program: String,
    pub package: String,
    pub purpose: String,
}

/// Where `program` lives on `PATH`, if anywhere.
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Fails with a [`MissingTool`] naming the first absent program.
pub fn require(tools: &[Tool]) -> Result<(), MissingTool> {
    for t in tools {
        if find_program(t.program).is_none() {
            return Err(MissingTool {
                program: t.program.into(),
                package: t.package.into(),
                purpose: t.purpose.into(),
            });
        }
    }
    Ok(())
}

/// What building the unix-board satellite needs (the main job, `moat
/// demo`): the programs, plus libffi's development files, which the unix
/// port finds through pkg-config.
pub const UNIX_BUILD: [Tool; 6] = [
    GCC,
    MAKE,
    PYTHON3,
    Tool {
        program: "pkg-config",
        package: "pkg-config",
        purpose: "find libffi for the unix port",
    },
    TAR,
    XZ,
];

/// Checks every tool of `tools` (and libffi's development files when
/// `libffi`) at once and fails with one line naming all that is missing and
/// the one `apt-get install` that brings it, before anything long starts.
pub fn preflight(tools: &[Tool], libffi: bool) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    let mut packages: Vec<&str> = Vec::new();
    for t in tools {
        if find_program(t.program).is_none() {
            missing.push(t.program);
            if !packages.contains(&t.package) {
                packages.push(t.package);
            }
        }
    }
    if libffi && !has_libffi() {
        missing.push("libffi (headers)");
        packages.push("libffi-dev");
    }
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "missing {}: install with `sudo apt-get install {}`",
        missing.join(", "),
        packages.join(" ")
    )
}

/// Whether pkg-config knows libffi (its -dev package is installed).
fn has_libffi() -> bool {
    Command::new("pkg-config")
        .args(["--exists", "libffi"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(log: &Path, n: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(log) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` with stdout and stderr appended to `log`; each output line is
/// also passed to `on_line` (for progress). Fails with the log's tail.
pub fn run_logged(
    mut cmd: Command,
    log: &Path,
    mut on_line: impl FnMut(&str),
) -> anyhow::Result<()> {
    let what = describe(&cmd);
    let mut logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open log {}", log.display()))?;
    writeln!(logf, "$ {what}")?;
    // One pipe for both streams keeps make's lines in order.
    let (reader, writer) = std::io::pipe().context("cannot create a pipe")?;
    let writer2 = writer.try_clone()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    // `cmd` holds our copies of the write end: drop it so EOF arrives.
    drop(cmd);
    for line in BufReader::new(reader).split(b'\n') {
        let line = line?;
        let line = String::from_utf8_lossy(&line);
        writeln!(logf, "{line}")?;
        on_line(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "`{what}` failed ({status}); log: {}\n--- last lines ---\n{}",
            log.display(),
            log_tail(log, 25)
        );
    }
    Ok(())
}

/// Runs `cmd`, capturing stdout; fails with stderr in the message.
pub fn run_capture(cmd: &mut Command) -> anyhow::Result<String> {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

fn quote(a: &OsStr) -> String {
    let a = a.to_string_lossy();
    if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
        format!("'{}'", a.replace('\'', "'\\''"))
    } else {
        a.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_package_to_install() {
        let e = require(&[Tool {
            program: "moat-no-such-program",
            package: "moat-pkg",
            purpose: "test",
        }])
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("moat-no-such-program"), "{msg}");
        assert!(msg.contains("apt-get install moat-pkg"), "{msg}");
    }

    #[test]
    fn failing_command_reports_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let mut lines = vec![];
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two >&2; exit 3"]);
        let err = run_logged(cmd, &log, |l| lines.push(l.to_string()))
            .unwrap_err()
            .to_string();
        assert_eq!(lines, ["one", "two"]);
        assert!(err.contains("two"), "{err}");
    }
}
