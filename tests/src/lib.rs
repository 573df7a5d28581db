//! The parity harness: runs the pinned Python PEFT (the oracle) and compares peft-rs with it.
//!
//! * [`oracle`]: finds the project venv (`cargo xtask setup` made it), runs the fixture generators in
//!   `tests/oracle/` and caches their output under `target/oracle-cache/`, keyed by a hash of the
//!   oracle scripts and requirements, so fixtures are regenerated exactly when they could change.
//! * [`models`]: Rust twins of the Python test models in `tests/oracle/models.py`.
//! * [`compare`]: value assertions with readable failure messages.
//! * [`harness`]: the steps every method's parity tests share (manifests, outputs in every state,
//!   status and config comparisons).
//!
//! Each compared case is recorded with [`oracle::record`]; `cargo xtask test` prints the count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod compare;
pub mod harness;
pub mod models;
pub mod oracle;
