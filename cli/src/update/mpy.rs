//! `--mpy`: modules compiled with the mpy-cross of the firmware's own
//! MicroPython tree (the source provider builds it into the cache), so the
//! node can load them (an `.mpy` from another version is refused at
//! import).

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A MicroPython cross-compiler.
#[derive(Clone, Debug)]
pub struct MpyCross {
    pub path: PathBuf,
    /// `MicroPython v1.25.0 …` as `--version` prints it.
    pub version: String,
}

impl MpyCross {
    /// The compiler at `path`, asked for its version.
    pub fn at(path: &Path) -> anyhow::Result<MpyCross> {
        let out = Command::new(path)
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run {}", path.display()))?;
        if !out.status.success() {
            bail!(
                "{} --version failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(MpyCross {
            path: path.to_owned(),
            version: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        })
    }

    /// The `.mpy` version it emits (`… emitting mpy v6.3` → `(6, 3)`).
    pub fn emits(&self) -> Option<(u32, u32)> {
        let v = self.version.split("emitting mpy v").nth(1)?;
        let v: String = v
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let (a, b) = v.split_once('.')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }

    /// Compiles module `name`'s `source` to `.mpy` bytes. The file name
    /// recorded in the output is `name.py`, so the result depends only on
    /// the source (equal sources give equal hashes).
    pub fn compile(&self, name: &str, source: &[u8]) -> anyhow::Result<Vec<u8>> {
        let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
        let src = dir.path().join("in.py");
        let out = dir.path().join("out.mpy");
        std::fs::write(&src, source)?;
        let run = Command::new(&self.path)
            .arg("-o")
            .arg(&out)
            .arg("-s")
            .arg(format!("{name}.py"))
            .arg(&src)
            .output()
            .with_context(|| format!("cannot run {}", self.path.display()))?;
        if !run.status.success() {
            bail!(
                "mpy-cross cannot compile module `{name}`: {}",
                String::from_utf8_lossy(&run.stderr).trim()
            );
        }
        std::fs::read(&out).with_context(|| format!("mpy-cross wrote no {}", out.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitted_mpy_version_is_read_from_the_version_line() {
        let m = |v: &str| MpyCross {
            path: "mpy-cross".into(),
            version: v.into(),
        };
        let v = "MicroPython v1.25.0 on 2025-04-15; mpy-cross emitting mpy v6.3";
        assert_eq!(m(v).emits(), Some((6, 3)));
        assert_eq!(m("MicroPython 0e00085-dirty").emits(), None);
    }
}
