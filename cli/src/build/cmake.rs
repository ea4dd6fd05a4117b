//! Ports built with CMake (rp2): the make-style build variables turned
//! into cache entries, the configure step run here, and the build command
//! handed back to the common compile step.

use crate::board::Board;
use crate::source::{rp2, Cache, Notes, SourceTree};
use crate::tools::{self, run_logged};
use anyhow::Context;
use std::path::Path;
use std::process::Command;

/// `-D` options for the port's CMakeLists from make-style `K=V` arguments.
pub fn defines(build_args: &[String]) -> Vec<String> {
    build_args
        .iter()
        .filter_map(|a| a.split_once('='))
        .filter(|(k, _)| *k != "CFLAGS_EXTRA")
        .map(|(k, v)| {
            let k = match k {
                "BOARD" => "MICROPY_BOARD",
                "VARIANT" => "MICROPY_BOARD_VARIANT",
                "FROZEN_MANIFEST" => "MICROPY_FROZEN_MANIFEST",
                "MPY_LIB_DIR" => "MICROPY_LIB_DIR",
                other => other,
            };
            format!("-D{k}={v}")
        })
        .collect()
}

/// Configures `port_dir` into `build_dir` (logged to `log`) and returns the
/// command that builds it.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    tree: &SourceTree,
    board: &Board,
    port_dir: &Path,
    build_dir: &Path,
    build_args: &[String],
    cache: &Cache,
    log: &Path,
    toolchain_env: &dyn Fn(&mut Command),
    notes: Notes,
) -> anyhow::Result<Command> {
    tools::require(&[rp2::CMAKE])?;
    let mut configure = Command::new("cmake");
    configure
        .arg("-S")
        .arg(port_dir)
        .arg("-B")
        .arg(build_dir)
        .args(defines(build_args))
        .env("SOURCE_DATE_EPOCH", tree.date_epoch().to_string())
        .env_remove("MAKEFLAGS");
    toolchain_env(&mut configure);
    if board.port == "rp2" {
        // picotool built here; the SDK would otherwise try to clone it.
        let sdk = rp2::provide(cache, notes)?;
        configure.arg(format!("-Dpicotool_DIR={}", sdk.picotool_dir.display()));
    }
    notes("configuring (cmake)");
    run_logged(configure, log, |_| {})
        .with_context(|| format!("cmake could not configure {}", port_dir.display()))?;
    let mut build = Command::new("cmake");
    build
        .arg("--build")
        .arg(build_dir)
        .arg(format!("-j{}", crate::source::jobs()))
        .env("SOURCE_DATE_EPOCH", tree.date_epoch().to_string())
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    toolchain_env(&mut build);
    Ok(build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_variables_become_the_ports_cmake_cache_entries() {
        let args = [
            "BOARD=RPI_PICO",
            "FROZEN_MANIFEST=/p/manifest.py",
            "MPY_LIB_DIR=/p/lib",
            "CFLAGS_EXTRA=-ffile-prefix-map=a=b",
            "MICROPY_PY_X=0",
        ]
        .map(String::from);
        assert_eq!(
            defines(&args),
            [
                "-DMICROPY_BOARD=RPI_PICO",
                "-DMICROPY_FROZEN_MANIFEST=/p/manifest.py",
                "-DMICROPY_LIB_DIR=/p/lib",
                "-DMICROPY_PY_X=0",
            ]
        );
    }
}
