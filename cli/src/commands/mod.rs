//! One module per CLI verb: argument struct + `run`.

pub mod boards;
pub mod build;
pub mod init;
pub mod wire;
