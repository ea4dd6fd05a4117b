//! Embeds the default node runtime (`node-runtime/`, its native module
//! `node-runtime/native/` too) and templates
//! (`templates/`) into the binary, so `cargo install` gives a working tool.
//! Generates `$OUT_DIR/embedded.rs` with one `(relative path, bytes)` entry
//! per file; cargo re-runs this when anything under the folders changes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let top = manifest_dir.parent().unwrap().to_path_buf();
    let mut out = String::new();
    for (name, dir, keep) in [
        (
            "NODE_RUNTIME",
            top.join("node-runtime"),
            is_runtime_module as fn(&Path) -> bool,
        ),
        (
            "NATIVE_MODULE",
            top.join("node-runtime/native"),
            is_native_source as fn(&Path) -> bool,
        ),
        (
            "TEMPLATES",
            top.join("templates"),
            is_template as fn(&Path) -> bool,
        ),
    ] {
        println!("cargo:rerun-if-changed={}", dir.display());
        // A moat without its runtime would build firmware that cannot boot:
        // refuse to build it (e.g. when packaged without the repository).
        assert!(
            dir.is_dir(),
            "{} is missing: moat embeds it; build moat from the repository",
            dir.display()
        );
        let mut files = vec![];
        walk(&dir, &dir, keep, &mut files);
        files.sort();
        writeln!(out, "pub static {name}: &[(&str, &[u8])] = &[").unwrap();
        for rel in files {
            let abs = dir.join(&rel);
            writeln!(
                out,
                "    ({rel:?}, include_bytes!({:?})),",
                abs.display().to_string()
            )
            .unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("embedded.rs");
    std::fs::write(dest, out).unwrap();
}

/// Frozen runtime modules: `.py` files outside `tests/` and hidden folders.
fn is_runtime_module(rel: &Path) -> bool {
    rel.extension().is_some_and(|e| e == "py")
        && !rel.components().any(|c| {
            let c = c.as_os_str().to_string_lossy();
            c == "tests" || c == "__pycache__" || c.starts_with('.')
        })
}

/// The native module's sources (`node-runtime/native/`), compiled into
/// every firmware as a user C module.
fn is_native_source(rel: &Path) -> bool {
    rel.extension()
        .is_some_and(|e| e == "c" || e == "h" || e == "mk" || e == "cmake")
}

fn is_template(rel: &Path) -> bool {
    rel.extension().is_some_and(|e| e == "j2")
}

fn walk(root: &Path, dir: &Path, keep: fn(&Path) -> bool, files: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, keep, files);
        } else {
            let rel = p.strip_prefix(root).unwrap();
            if keep(rel) {
                files.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
}
