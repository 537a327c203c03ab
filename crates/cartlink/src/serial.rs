//! Linux glue (feature `std`): opening ports, pty pairs, and one service step that moves
//! bytes between a port and a state machine. The edge runtime and `renalscan cart-sim`
//! call [`service_link`] / [`service_controller`] in a loop.

use std::io::{self, Read, Write};
use std::time::Duration;

pub use serialport;
use serialport::{SerialPort, TTYPort};

use crate::cart::{Controller, Event};
use crate::device::Link;
use crate::frame::MAX_WIRE_FRAME;
use crate::msg::Command;

/// How long one service step waits for input: short enough for the timers (the
/// shortest default is 250 ms), long enough not to spin.
pub const POLL: Duration = Duration::from_millis(10);

/// Opens a serial device, 8N1, no flow control.
pub fn open(path: &str, baud: u32) -> serialport::Result<TTYPort> {
    serialport::new(path, baud).timeout(POLL).open_native()
}

/// A pseudo-terminal pair `(master, slave)`, both raw; the slave has a path
/// (`slave.name()`) another process can open as if it were a serial device.
pub fn pty_pair() -> serialport::Result<(TTYPort, TTYPort)> {
    let (mut master, mut slave) = TTYPort::pair()?;
    master.set_timeout(POLL)?;
    slave.set_timeout(POLL)?;
    Ok((master, slave))
}

/// Reads whatever arrives within the port's timeout; 0 when nothing did.
pub fn read_some(port: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    match port.read(buf) {
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// One step of the device side: [`receive_link`] then [`transmit_link`].
pub fn service_link<const N: usize, P: Read + Write>(
    link: &mut Link<N>,
    port: &mut P,
    clock: impl Fn() -> u64,
    on_command: impl FnMut(Command),
) -> io::Result<()> {
    receive_link(link, port, &clock, on_command)?;
    transmit_link(link, port, &clock)
}

/// Reads what arrives within the port's timeout and hands it to `link`. A runtime that
/// updates [`Link::set_status`] between this and [`transmit_link`] has the Status that
/// confirms a command already show the command's effect.
pub fn receive_link<const N: usize, P: Read>(
    link: &mut Link<N>,
    port: &mut P,
    clock: impl Fn() -> u64,
    on_command: impl FnMut(Command),
) -> io::Result<()> {
    let mut rx = [0u8; 256];
    let n = read_some(port, &mut rx)?;
    link.receive(&rx[..n], clock(), on_command);
    Ok(())
}

/// Writes every frame `link` has due. `clock` gives monotonic milliseconds.
pub fn transmit_link<const N: usize, P: Write>(
    link: &mut Link<N>,
    port: &mut P,
    clock: impl Fn() -> u64,
) -> io::Result<()> {
    let mut tx = [0u8; MAX_WIRE_FRAME];
    while let Some(n) = link.poll_transmit(clock(), &mut tx) {
        port.write_all(&tx[..n])?;
    }
    port.flush()
}

/// One step of the cart side; see [`service_link`].
pub fn service_controller<P: Read + Write>(
    cart: &mut Controller,
    port: &mut P,
    clock: impl Fn() -> u64,
    mut on_event: impl FnMut(Event),
) -> io::Result<()> {
    let mut rx = [0u8; 256];
    let n = read_some(port, &mut rx)?;
    cart.receive(&rx[..n], clock(), &mut on_event);
    let mut tx = [0u8; MAX_WIRE_FRAME];
    while let Some(n) = cart.poll_transmit_with(clock(), &mut tx, &mut on_event) {
        port.write_all(&tx[..n])?;
    }
    port.flush()
}

/// Milliseconds since `start`, for the `clock` arguments.
pub fn millis_since(start: std::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Keeps the `SerialPort` trait in scope for callers that only import this module.
pub fn port_name(port: &TTYPort) -> Option<std::string::String> {
    port.name()
}
