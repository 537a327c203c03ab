//! One feature set for the shared dependencies, whatever `-p` selection cargo builds.
//!
//! Cargo unifies a dependency's features only across the packages of one invocation, so the
//! x86 test run, the aarch64 device build, its test subset and the edge's qemu test each
//! compiled tract and its dependencies again with slightly different features. Every member
//! depends on this crate, whose `Cargo.toml` (written by `cargo hakari generate`, settings in
//! `.config/hakari.toml`) asks for the union: each target then builds each dependency once.
//! It has no code.
