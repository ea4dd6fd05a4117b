//! The `moat` library: project manifests, boards, templates, the MicroPython
//! source provider and firmware builds. The binary (`main.rs`) is a thin
//! layer over this.

pub mod args;
pub mod board;
pub mod build;
pub mod check;
pub mod client;
pub mod doc;
pub mod embedded;
pub mod emulator;
pub mod flash;
pub mod hash_table;
pub mod keys;
pub mod local_node;
pub mod manifest;
pub mod modules;
pub mod patches;
pub mod project;
pub mod render;
pub mod repl;
pub mod runtime_dir;
pub mod sdk;
pub mod secrets;
pub mod source;
pub mod template;
pub mod toolchains;
pub mod tools;
pub mod update;
