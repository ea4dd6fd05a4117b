//! One module per CLI verb: argument struct + `run`.

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
