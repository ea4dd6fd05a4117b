//! Shared helpers for the end-to-end tests (locating the `moat` binary, temp projects).
