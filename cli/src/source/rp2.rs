//! What MicroPython's rp2 port needs beside its tree, all from Debian
//! (trixie): the Pico SDK (`pico-sdk-source`), TinyUSB (`tinyusb-source`),
//! mbedTLS and picotool (source packages), plus picotool built once without
//! libusb (the firmware build only uses it to make the UF2; else the SDK
//! would try to clone and build it).

use super::{cache, provide_component, Cache, Component, Notes};
use crate::tools::{self, run_logged, Tool};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const CMAKE: Tool = Tool {
    program: "cmake",
    package: "cmake",
    purpose: "build the rp2 port and picotool",
};

pub const GXX: Tool = Tool {
    program: "g++",
    package: "g++",
    purpose: "build picotool",
};

/// The folders of the rp2 port's extra sources.
#[derive(Debug, Clone)]
pub struct Rp2Sdk {
    pub pico_sdk: PathBuf,
    pub tinyusb: PathBuf,
    pub mbedtls: PathBuf,
    /// The folder holding `picotoolConfig.cmake` (for `-Dpicotool_DIR=`).
    pub picotool_dir: PathBuf,
}

impl Rp2Sdk {
    /// `(folder in the MicroPython tree, source)` for each submodule the
    /// Debian tarball leaves empty.
    pub fn tree_dirs(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("lib/pico-sdk", self.pico_sdk.clone()),
            ("lib/tinyusb", self.tinyusb.clone()),
            ("lib/mbedtls", self.mbedtls.clone()),
        ]
    }
}

fn components() -> [Component; 4] {
    [
        Component::DebianBinary {
            package: "pico-sdk-source".into(),
            subdir: "usr/src/pico-sdk".into(),
        },
        Component::DebianBinary {
            package: "tinyusb-source".into(),
            subdir: "usr/src/tinyusb".into(),
        },
        Component::DebianSource {
            package: "mbedtls".into(),
        },
        Component::DebianSource {
            package: "picotool".into(),
        },
    ]
}

/// Provides the rp2 sources and picotool (fetched and built once).
pub fn provide(cache: &Cache, notes: Notes) -> anyhow::Result<Rp2Sdk> {
    let [sdk, tusb, mbedtls, picotool] = components();
    let pico_sdk = provide_component(&sdk, cache, notes)?;
    let tinyusb = provide_component(&tusb, cache, notes)?;
    let mbedtls = provide_component(&mbedtls, cache, notes)?;
    let picotool_src = provide_component(&picotool, cache, notes)?;
    let picotool_dir = build_picotool(&picotool_src, &pico_sdk, cache, notes)?;
    Ok(Rp2Sdk {
        pico_sdk,
        tinyusb,
        mbedtls,
        picotool_dir,
    })
}

/// Builds and installs picotool (no libusb) into the cache.
fn build_picotool(
    src: &Path,
    pico_sdk: &Path,
    cache: &Cache,
    notes: Notes,
) -> anyhow::Result<PathBuf> {
    let base = cache.dir("components")?;
    let dest = base.join("picotool-build");
    let config = |d: &Path| d.join("lib/cmake/picotool");
    if !cache::is_complete(&dest) {
        let _lock = cache::lock(&base.join("picotool-build.lock"))?;
        if !cache::is_complete(&dest) {
            tools::require(&[CMAKE, GXX, tools::MAKE])?;
            cache::install(&dest, "picotool (no libusb)", |scratch| {
                notes("building picotool (once)");
                let build = scratch.join("build");
                let prefix = scratch.join("prefix");
                let log = scratch.join("build.log");
                let mut configure = Command::new("cmake");
                configure
                    .arg("-S")
                    .arg(src)
                    .arg("-B")
                    .arg(&build)
                    .arg("-DPICOTOOL_NO_LIBUSB=1")
                    .arg("-DCMAKE_BUILD_TYPE=Release")
                    .arg(format!("-DPICO_SDK_PATH={}", pico_sdk.display()))
                    .arg(format!("-DCMAKE_INSTALL_PREFIX={}", prefix.display()));
                run_logged(configure, &log, |_| {}).context("cannot configure picotool")?;
                let mut make = Command::new("cmake");
                make.arg("--build")
                    .arg(&build)
                    .arg("--target")
                    .arg("install")
                    .arg(format!("-j{}", super::jobs()))
                    .env_remove("MAKEFLAGS");
                run_logged(make, &log, |_| {}).context("cannot build picotool")?;
                if !config(&prefix).join("picotoolConfig.cmake").is_file() {
                    bail!("picotool built but installed no picotoolConfig.cmake");
                }
                Ok(prefix)
            })?;
        }
    }
    Ok(config(&dest))
}
