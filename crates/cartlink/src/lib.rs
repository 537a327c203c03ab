//! The serial protocol between the renalscan edge runtime ("device") and the cart
//! controller ("cart"): buttons, lights and a small display, often a microcontroller.
//!
//! `no_std` and allocation-free so the cart firmware can use the same crate; the `std`
//! feature adds error impls and serial-port glue for Linux ([`serial`]).
//!
//! - [`frame`]: `0x00 | COBS(version | postcard(msg) | CRC-32) | 0x00`, at most
//!   [`MAX_WIRE_FRAME`] bytes, resynchronising at every zero byte.
//! - [`msg`]: the messages, both directions.
//! - [`device::Link`]: the edge side; queues results until acknowledged, re-sends them,
//!   sends Hello, Status and Heartbeat, runs each cart command once.
//! - [`cart::Controller`]: the cart side; acknowledges and de-duplicates results,
//!   re-sends commands until the device confirms them.
//!
//! Both state machines are sans-I/O: the caller moves bytes and supplies the clock
//! (milliseconds, monotonic). The wire format is documented in the crate's README.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod cart;
pub mod device;
pub mod frame;
pub mod msg;
pub mod seq;
#[cfg(feature = "std")]
pub mod serial;
#[cfg(feature = "std")]
pub mod sim;

pub use frame::{
    decode_frame, encode, encode_as, frame_raw, DecodeStats, EncodeError, FrameBuf, FrameDecoder,
    FrameError, MAX_WIRE_FRAME, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
pub use msg::*;
