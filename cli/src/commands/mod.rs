//! One module per CLI verb: argument struct + `run`.
//!
//! `--json` (docs/json.md): a verb prints one JSON document on stdout for
//! what it did, and a failure as `{"error": {"type", "args", "message"}}`
//! on stdout as well (the human line still goes to stderr). A verb that
//! knows more about its failure prints that document itself
//! ([`print_json_error`]); `main` prints the plain one for the rest.

use std::sync::atomic::{AtomicBool, Ordering};

pub mod boards;
pub mod build;
pub mod cfg;
pub mod cfg_upload;
pub mod cmd;
pub mod demo;
pub mod diff_update;
pub mod doc;
pub mod flash;
pub mod fs;
pub mod fs_mount;
pub mod init;
pub mod key;
pub mod monitor;
pub mod mux;
pub mod run;
pub mod wire;

/// Whether a verb printed its failure as JSON already.
static JSON_ERROR_PRINTED: AtomicBool = AtomicBool::new(false);

/// Prints a verb's failure document (`{"error": {…}, …}`) on stdout.
pub fn print_json_error(doc: &serde_json::Value) {
    println!("{doc}");
    JSON_ERROR_PRINTED.store(true, Ordering::Relaxed);
}

/// The failure document of an error that is not a node's: `type` null.
pub fn local_json_error(e: &anyhow::Error) -> serde_json::Value {
    serde_json::json!({"error": {"type": null, "args": [], "message": format!("{e:#}")}})
}

/// Whether a failure document went out already.
pub fn json_error_printed() -> bool {
    JSON_ERROR_PRINTED.load(Ordering::Relaxed)
}
