//! Fetching source and binary packages from Debian through a private apt
//! configuration: the machine's own mirror (read from its apt sources at run
//! time), another suite, and lists/caches under moat's cache dir. Nothing
//! system-wide is touched.

use crate::tools::{self, run_capture, run_logged};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The suite that carries the packages moat fetches.
pub const SUITE: &str = "trixie";

const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A mirror found in the machine's apt configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub uri: String,
    pub keyring: Option<String>,
}

/// The first non-security Debian mirror of a deb822 `.sources` file.
pub fn parse_deb822(text: &str) -> Option<Mirror> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let types = field("Types").unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        if field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        let Some(uri) = field("URIs").and_then(|u| u.split_whitespace().next().map(String::from))
        else {
            continue;
        };
        if is_security(&uri) {
            continue;
        }
        return Some(Mirror {
            uri,
            keyring: field("Signed-By").filter(|k| k.starts_with('/')),
        });
    }
    None
}

/// The first non-security `deb` line of a one-line-style `sources.list`.
pub fn parse_one_line(text: &str) -> Option<Mirror> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut keyring = None;
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            while let Some(w) = (!rest.is_empty()).then(|| rest.remove(0)) {
                let opt = w.trim_start_matches('[').trim_end_matches(']');
                if let Some(k) = opt.strip_prefix("signed-by=") {
                    keyring = Some(k.to_string());
                }
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let Some(uri) = rest.first() else { continue };
        if is_security(uri) {
            continue;
        }
        return Some(Mirror {
            uri: uri.to_string(),
            keyring,
        });
    }
    None
}

fn is_security(uri: &str) -> bool {
    uri.trim_end_matches('/').ends_with("-security")
}

/// The machine's Debian mirror, read from `/etc/apt`.
pub fn machine_mirror() -> anyhow::Result<Mirror> {
    let mut found = None;
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let m = match p.extension().and_then(|e| e.to_str()) {
                Some("sources") => parse_deb822(&text),
                Some("list") => parse_one_line(&text),
                _ => None,
            };
            if m.is_some() {
                found = m;
                break;
            }
        }
    }
    if found.is_none() {
        if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
            found = parse_one_line(&text);
        }
    }
    let mut m = found.context(
        "no Debian mirror in /etc/apt/sources.list(.d): moat fetches MicroPython's source \
         from Debian; configure apt, or set `[micropython] path = \"…\"` (a local tree) \
         or `git = \"…\"` + `rev = \"…\"` in moat.toml",
    )?;
    if m.keyring.is_none() && Path::new(DEFAULT_KEYRING).is_file() {
        m.keyring = Some(DEFAULT_KEYRING.into());
    }
    Ok(m)
}

/// The upstream part of a Debian version: `1:1.25.0+ds-1` → `1.25.0`.
pub fn upstream_version(debian: &str) -> &str {
    let v = debian.split_once(':').map_or(debian, |(_, v)| v);
    let v = v.rsplit_once('-').map_or(v, |(u, _)| u);
    v.split(['+', '~']).next().unwrap_or(v)
}

/// A private apt configuration under `dir`.
pub struct Apt {
    dir: PathBuf,
    log: PathBuf,
}

impl Apt {
    /// Writes the private configuration (the machine's mirror, suite
    /// [`SUITE`]) and refreshes its package lists.
    pub fn prepare(dir: &Path) -> anyhow::Result<Apt> {
        tools::require(&[tools::APT_GET])?;
        let mirror = machine_mirror()?;
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let opts = mirror
            .keyring
            .as_ref()
            .map(|k| format!("[signed-by={k}] "))
            .unwrap_or_default();
        let list = format!(
            "deb {opts}{uri} {SUITE} main\ndeb-src {opts}{uri} {SUITE} main\n",
            uri = mirror.uri
        );
        std::fs::write(dir.join("sources.list"), list)?;
        let apt = Apt {
            dir: dir.to_path_buf(),
            log: dir.join("apt.log"),
        };
        let _ = std::fs::remove_file(&apt.log);
        let mut update = apt.command("apt-get");
        update.args(["-q", "update"]);
        run_logged(update, &apt.log, |_| {})
            .context("cannot refresh the private apt lists (is the network reachable?)")?;
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut c = Command::new(program);
        for (k, v) in [
            ("Dir::Etc::sourcelist", d.join("sources.list")),
            ("Dir::Etc::sourceparts", PathBuf::from("-")),
            ("Dir::State::Lists", d.join("lists")),
            ("Dir::Cache", d.join("cache")),
        ] {
            c.arg("-o").arg(format!("{k}={}", v.display()));
        }
        c.args(["-o", "Debug::NoLocking=1"]);
        c
    }

    /// Versions of source package `pkg` the suite offers.
    pub fn source_versions(&self, pkg: &str) -> anyhow::Result<Vec<String>> {
        let out = run_capture(self.command("apt-cache").args(["showsrc", pkg]))?;
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix("Version:"))
            .map(|v| v.trim().to_string())
            .collect())
    }

    /// Downloads source package `pkg` at `debian_version` into `dest` and
    /// returns its `.orig` tarball.
    pub fn download_source(
        &self,
        pkg: &str,
        debian_version: &str,
        dest: &Path,
    ) -> anyhow::Result<PathBuf> {
        let mut cmd = self.command("apt-get");
        cmd.args(["-q", "source", "--download-only"])
            .arg(format!("{pkg}={debian_version}"))
            .current_dir(dest);
        run_logged(cmd, &self.log, |_| {})
            .with_context(|| format!("cannot download the source package {pkg}"))?;
        find_with(dest, ".orig.tar.").with_context(|| {
            format!(
                "apt fetched {pkg} but no .orig tarball is in {}",
                dest.display()
            )
        })
    }

    /// Downloads only the upstream tarball of source package `pkg` at
    /// `debian_version` into `dest` (no .dsc or Debian diff, which some
    /// mirrors lack) and returns it.
    pub fn download_source_tarball(
        &self,
        pkg: &str,
        debian_version: &str,
        dest: &Path,
    ) -> anyhow::Result<PathBuf> {
        let mut cmd = self.command("apt-get");
        cmd.args(["-q", "source", "--download-only", "--tar-only"])
            .arg(format!("{pkg}={debian_version}"))
            .current_dir(dest);
        run_logged(cmd, &self.log, |_| {})
            .with_context(|| format!("cannot download the source tarball of {pkg}"))?;
        find_with(dest, ".orig.tar.").with_context(|| {
            format!(
                "apt fetched {pkg} but no .orig tarball is in {}",
                dest.display()
            )
        })
    }

    /// Downloads binary package `pkg` into `dest` and returns the `.deb`.
    pub fn download_binary(&self, pkg: &str, dest: &Path) -> anyhow::Result<PathBuf> {
        let mut cmd = self.command("apt-get");
        cmd.args(["-q", "download", pkg]).current_dir(dest);
        run_logged(cmd, &self.log, |_| {})
            .with_context(|| format!("cannot download the package {pkg}"))?;
        find_with(dest, ".deb")
            .with_context(|| format!("apt fetched {pkg} but no .deb is in {}", dest.display()))
    }
}

fn find_with(dir: &Path, needle: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(needle))
        })
}

/// Fetches the MicroPython source package for upstream `version` into
/// `work` and returns the orig tarball; a version the suite lacks is an
/// error naming what it has.
pub fn fetch_micropython(apt_dir: &Path, version: &str, work: &Path) -> anyhow::Result<PathBuf> {
    let apt = Apt::prepare(apt_dir)?;
    let offered = apt.source_versions("micropython")?;
    let Some(debian_version) = offered.iter().find(|v| upstream_version(v) == version) else {
        bail!(
            "Debian {SUITE} has no MicroPython {version} (it offers {}); set \
             `[micropython] version` to one of those, or use `path = \"…\"` or \
             `git = \"…\"` + `rev = \"…\"` in moat.toml",
            if offered.is_empty() {
                "none".to_string()
            } else {
                offered
                    .iter()
                    .map(|v| upstream_version(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    };
    apt.download_source("micropython", debian_version, work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_picks_the_main_mirror_not_security() {
        let text = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n\
                    Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm\n\
                    Signed-By: /usr/share/keyrings/k.gpg\n";
        // Security stanza first: skipped.
        assert_eq!(
            parse_deb822(text),
            Some(Mirror {
                uri: "http://mirror.example/debian".into(),
                keyring: Some("/usr/share/keyrings/k.gpg".into())
            })
        );
    }

    #[test]
    fn one_line_sources_with_options() {
        let text = "# x\ndeb-src http://a/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n";
        assert_eq!(
            parse_one_line(text),
            Some(Mirror {
                uri: "http://m.example/debian".into(),
                keyring: Some("/k.gpg".into())
            })
        );
    }

    #[test]
    fn upstream_version_strips_epoch_repack_and_revision() {
        assert_eq!(upstream_version("1.25.0+ds-1"), "1.25.0");
        assert_eq!(upstream_version("1:1.22.1~rc1-3"), "1.22.1");
        assert_eq!(upstream_version("2.1.1-2"), "2.1.1");
    }
}
