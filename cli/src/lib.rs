//! The `moat` library: project manifests, boards, templates, the MicroPython
//! source provider and firmware builds. The binary (`main.rs`) is a thin
//! layer over this.

pub mod board;
pub mod manifest;
pub mod project;
