//! Shared test helpers.

pub mod qop;
