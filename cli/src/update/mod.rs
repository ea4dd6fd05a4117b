//! `moat diff-update`: bring a node's modules up to date without
//! reflashing (design.md §Updating), and `moat cfg upload`.
//!
//! 1. [`project`]: the modules the firmware would freeze now, hashed.
//! 2. [`table`]: one `sys.up.mods` round trip (node-runtime `update.py`):
//!    the node's frozen table, search order, override files and ledger.
//! 3. [`plan`]: sans-I/O, per module: nothing, upload, delete, or refuse.
//! 4. [`upload`]: chunked to the link's message limit, to a temporary
//!    name, verified by hash on the node, renamed over the target.
//! 5. [`apply`]: carries a plan out, restarts what changed and checks the
//!    node imports the new modules.

pub mod apply;
pub mod config;
pub mod meter;
pub mod mpy;
pub mod plan;
pub mod project;
pub mod table;
pub mod upload;
