//! Helpers shared by the integration tests, one file per concern. Every test
//! file does `mod common; use common::*;`.

// Each test binary uses its own subset of these helpers, and of these files.
#![allow(dead_code, unused_imports)]

mod cli;
mod clock;
mod db;
mod due;
mod migrate;
mod roles;
mod seed;
mod tokens;

pub use cli::*;
pub use clock::*;
pub use db::*;
pub use due::*;
pub use migrate::*;
pub use roles::*;
pub use seed::*;
pub use tokens::*;
