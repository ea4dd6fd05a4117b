//! Files compiled into the binary by `build.rs`: the node runtime
//! (`node-runtime/`, frozen into every firmware) and the default templates
//! (`templates/`). Each entry is `(path relative to its folder, bytes)`.

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
