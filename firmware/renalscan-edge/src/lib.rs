//! renalscan-edge: the runtime on the cart's ARM board, from probe frames to recorded
//! screening decisions.
//!
//! Data flows one way: [`source`] (V4L2 probe, replay, phantom) -> capture thread ->
//! latest-frame [`source::Slot`] -> [`gate`] -> usimage preprocessing -> [`infer`] (tract,
//! the bundle's model) -> [`aggregate`] (window + hysteresis) -> [`sink`]s, one list behind
//! one trait (journal first, [`snapshot`] PNGs of decisive frames, stdout, cart link, the
//! operator view of `operator-view`).
//! [`runtime`] turns the loop, with systemd readiness and watchdog ([`watchdog`]); the
//! binary adds the CLI. [`exam`] replays recorded sweeps through the same pipeline for
//! exam-level evaluation on the workstation.

pub mod aggregate;
pub mod benchview;
pub mod check;
pub mod cli;
pub mod config;
pub mod diagnostics;
pub mod events;
pub mod exam;
pub mod gate;
pub mod health;
pub mod infer;
pub mod pacscmd;
pub mod pipeline;
pub mod runtime;
pub mod selftest;
pub mod sessions;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod stats;
pub mod trace;
pub mod trust;
pub mod update;
pub mod version;
pub mod watchdog;
pub mod workers;
