//! The contracts between the workstation and the cart, each with this crate as its one
//! owner:
//!
//! - [`class`]: the six screening classes, their labels and display names, and how
//!   p(abnormal) follows from the class probabilities. `no_std`, so the cart controller's
//!   firmware (through `cartlink`) names findings with the same enum.
//! - [`taxonomy`]: a model's label list as its manifest states it, checked against the
//!   classes, with the normal class located once.
//! - [`manifest`]: the bundle manifest, one type written by `renalscan train`, completed and
//!   signed by `renalscan bundle` and read by the device.
//! - [`events`]: what the device emits: decisions, status, clinician marks; the journal's
//!   record format.
//!
//! Nothing here does I/O beyond reading and writing manifest text: the crates that sign,
//! infer or record depend on this one, never the other way round.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

pub mod class;
#[cfg(feature = "std")]
pub mod events;
#[cfg(feature = "std")]
pub mod manifest;
#[cfg(feature = "std")]
pub mod taxonomy;

pub use class::{p_abnormal, Class, Side, LABELS};
#[cfg(feature = "std")]
pub use manifest::{Manifest, ManifestError};
#[cfg(feature = "std")]
pub use taxonomy::{Taxonomy, TaxonomyError};
