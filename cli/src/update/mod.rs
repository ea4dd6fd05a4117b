//! `moat diff-update`: bring a node's modules up to date without
//! reflashing (docs/update.md), and `moat cfg upload`.
//!
//! 1. [`project`]: the modules the firmware would freeze now, hashed.
//! 2. [`table`]: one `sys.up.mods` round trip (node-runtime `update.py`):
//!    the node's frozen table, search order, override files and ledger.
//! 3. [`plan`]: sans-I/O, per module: nothing, upload, delete, or refuse.
//! 4. [`upload`]: chunked to the link's message limit, to a temporary
//!    name, verified by hash on the node, renamed over the target.
//! 5. [`apply`]: carries a plan out, restarts what changed and checks the
//!    node imports the new modules; [`meter`] counts the link's bytes.
//! 6. [`config`]: `moat cfg upload`.
//!
//! The node's side (`sys.up`, a sub-app of `sys` defined in
//! node-runtime `update.py`):
//!
//! - `sys.up.mods(t=digest, o=offset)` → `{t, p, f, o, l, v, n}`: digest
//!   of the frozen `_hash` table, the search order (`sys.path` entries on
//!   the node's filesystem, `""` = root, `lib`, and `.frozen`), the frozen
//!   table (left out when `t` names it), `[[path, hash]]` of every
//!   `.py`/`.mpy`/`.moat-tmp` file in those folders, the ledger (modules
//!   diff-update put there that the firmware lacks, file `moat.upd`), the
//!   `.mpy` version the node loads, and `n` when the answer continues at
//!   that offset (it is cut to the node's message limit);
//! - `sys.up.drop(m=[names])`: forget modules so the next import reads
//!   the files;
//! - `sys.up.load(m=[names])` → `{name: why}` for those that fail to import.
//!
//! Overrides live in the node's root folder, which comes before `.frozen`
//! on `sys.path` (a file there replaces the frozen module of that name);
//! `/lib`, where a port lists it, comes after `.frozen` and only serves
//! modules the firmware lacks.

pub mod apply;
pub mod config;
pub mod config_repl;
pub mod meter;
pub mod mpy;
pub mod plan;
pub mod project;
pub mod table;
pub mod upload;
