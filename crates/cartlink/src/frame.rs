//! Framing: `0x00 | COBS(version | postcard(message) | CRC-32) | 0x00`.
//!
//! COBS removes every zero byte from the body, so a zero always marks a frame boundary and a
//! receiver that joins mid-stream, or loses bytes, is back in step at the next zero. The CRC
//! catches what COBS cannot (flipped bits that still decode). The leading zero flushes any
//! partial frame the receiver may be holding, so one lost byte costs at most one frame.
//!
//! postcard's own `CobsAccumulator` is not used: it deserialises straight out of the COBS
//! buffer, leaving no place to check a CRC first.

use core::fmt;

use crate::msg::Message;

/// Newest protocol version: 2 appended the exam messages.
pub const PROTOCOL_VERSION: u8 = 2;
/// Oldest version this implementation still decodes, and frames for a peer that speaks it.
pub const MIN_PROTOCOL_VERSION: u8 = 1;
/// Largest frame on the wire, both delimiters included.
pub const MAX_WIRE_FRAME: usize = 128;
/// Largest COBS-encoded body (between the delimiters).
pub const MAX_ENCODED: usize = MAX_WIRE_FRAME - 2;
/// Largest raw body: version + message + CRC; COBS adds one byte per 254 (here: one).
pub const MAX_RAW: usize = MAX_ENCODED - 1;
/// Largest postcard-encoded message.
pub const MAX_MESSAGE: usize = MAX_RAW - 1 - CRC_LEN;
const CRC_LEN: usize = 4;

/// CRC-32/ISO-HDLC (the zlib/Ethernet CRC), little-endian on the wire.
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// A buffer that always holds one encoded frame.
pub type FrameBuf = [u8; MAX_WIRE_FRAME];

/// Why a message could not be encoded. Only reachable with oversized strings in a
/// hand-built message, since every field is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The message does not fit in [`MAX_MESSAGE`] bytes.
    TooLarge,
    /// The output buffer is shorter than the frame.
    BufferTooSmall,
    /// The message does not exist in the requested protocol version (or that version is
    /// not one we speak).
    Version(u8),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge => write!(f, "message larger than {MAX_MESSAGE} bytes"),
            EncodeError::BufferTooSmall => write!(f, "output buffer too small for frame"),
            EncodeError::Version(v) => write!(f, "message not in protocol version {v}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}

/// Why a received frame was discarded. All are recoverable: the decoder is already
/// waiting for the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// More than [`MAX_ENCODED`] bytes without a delimiter (garbage or a lost zero).
    Overflow,
    /// Not valid COBS.
    Cobs,
    /// Shorter than a version byte, a message tag and a CRC.
    TooShort,
    /// CRC mismatch: corrupted in transit.
    Crc,
    /// Intact frame of a protocol version we do not speak.
    Version(u8),
    /// Intact frame whose message we cannot parse (unknown tag, bad field, trailing bytes).
    Malformed,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Overflow => write!(f, "frame longer than {MAX_ENCODED} bytes"),
            FrameError::Cobs => write!(f, "invalid COBS encoding"),
            FrameError::TooShort => write!(f, "frame too short"),
            FrameError::Crc => write!(f, "CRC mismatch"),
            FrameError::Version(v) => write!(f, "unsupported protocol version {v}"),
            FrameError::Malformed => write!(f, "malformed message"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FrameError {}

/// Encodes `msg` as one complete wire frame (both delimiters) of the newest protocol version
/// into `out`; returns its length.
pub fn encode(msg: &Message, out: &mut [u8]) -> Result<usize, EncodeError> {
    encode_as(msg, PROTOCOL_VERSION, out)
}

/// Encodes `msg` in a frame of protocol `version`, for a peer that speaks no newer one.
/// Refuses a message that version does not have.
pub fn encode_as(msg: &Message, version: u8, out: &mut [u8]) -> Result<usize, EncodeError> {
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) || msg.min_version() > version
    {
        return Err(EncodeError::Version(version));
    }
    let mut raw = [0u8; 1 + MAX_MESSAGE];
    raw[0] = version;
    let body_len = postcard::to_slice(msg, &mut raw[1..])
        .map_err(|_| EncodeError::TooLarge)?
        .len();
    frame_raw(&raw[..1 + body_len], out)
}

/// Frames an already serialised body (version byte + postcard message): appends the CRC,
/// COBS-encodes and adds the delimiters. For tests, fuzzing and hand-built frames.
pub fn frame_raw(body: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    if body.len() > MAX_RAW - CRC_LEN {
        return Err(EncodeError::TooLarge);
    }
    let mut raw = [0u8; MAX_RAW];
    raw[..body.len()].copy_from_slice(body);
    let crc = CRC.checksum(body);
    let raw_len = body.len() + CRC_LEN;
    raw[body.len()..raw_len].copy_from_slice(&crc.to_le_bytes());

    let needed = cobs::max_encoding_length(raw_len) + 2;
    if out.len() < needed {
        return Err(EncodeError::BufferTooSmall);
    }
    out[0] = 0;
    let n = cobs::try_encode(&raw[..raw_len], &mut out[1..needed - 1])
        .map_err(|_| EncodeError::BufferTooSmall)?;
    out[1 + n] = 0;
    Ok(n + 2)
}

/// Counters of what the decoder saw, for status displays and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub frames_ok: u32,
    pub overflow: u32,
    pub cobs: u32,
    pub too_short: u32,
    pub crc: u32,
    pub version: u32,
    pub malformed: u32,
}

impl DecodeStats {
    /// All discarded frames.
    pub fn errors(&self) -> u32 {
        self.overflow
            .saturating_add(self.cobs)
            .saturating_add(self.too_short)
            .saturating_add(self.crc)
            .saturating_add(self.version)
            .saturating_add(self.malformed)
    }

    fn count(&mut self, e: FrameError) {
        let c = match e {
            FrameError::Overflow => &mut self.overflow,
            FrameError::Cobs => &mut self.cobs,
            FrameError::TooShort => &mut self.too_short,
            FrameError::Crc => &mut self.crc,
            FrameError::Version(_) => &mut self.version,
            FrameError::Malformed => &mut self.malformed,
        };
        *c = c.saturating_add(1);
    }
}

/// Byte-at-a-time frame decoder with a fixed buffer; never allocates, never panics on input.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    buf: [u8; MAX_ENCODED],
    len: usize,
    /// Discarding an over-long frame until the next delimiter.
    overflow: bool,
    stats: DecodeStats,
    /// Protocol version of the last intact frame: what the peer speaks.
    last_version: Option<u8>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_ENCODED],
            len: 0,
            overflow: false,
            stats: DecodeStats {
                frames_ok: 0,
                overflow: 0,
                cobs: 0,
                too_short: 0,
                crc: 0,
                version: 0,
                malformed: 0,
            },
            last_version: None,
        }
    }

    /// Protocol version of the last intact frame, if any: frame replies in it, and the
    /// peer understands them.
    pub fn peer_version(&self) -> Option<u8> {
        self.last_version
    }

    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// Feeds one byte; returns a message or an error when a frame ends.
    pub fn push(&mut self, byte: u8) -> Option<Result<Message, FrameError>> {
        if byte != 0 {
            if self.overflow {
                return None;
            }
            if self.len == self.buf.len() {
                self.overflow = true;
                self.len = 0;
                return None;
            }
            self.buf[self.len] = byte;
            self.len += 1;
            return None;
        }
        let result = if self.overflow {
            self.overflow = false;
            Some(Err(FrameError::Overflow))
        } else if self.len == 0 {
            // Back-to-back delimiters: idle line, not an error.
            None
        } else {
            Some(decode_frame(&mut self.buf[..self.len]))
        };
        self.len = 0;
        match &result {
            Some(Ok((v, _))) => {
                self.last_version = Some(*v);
                self.stats.frames_ok = self.stats.frames_ok.saturating_add(1)
            }
            Some(Err(e)) => {
                log::debug!("cartlink: discarded frame: {e}");
                self.stats.count(*e)
            }
            None => {}
        }
        result.map(|r| r.map(|(_, m)| m))
    }

    /// Feeds a chunk, calling `f` for every frame that ends in it.
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(Result<Message, FrameError>)) {
        for &b in data {
            if let Some(r) = self.push(b) {
                f(r);
            }
        }
    }
}

/// Decodes one COBS body (delimiters stripped) in place.
pub fn decode_body(body: &mut [u8]) -> Result<Message, FrameError> {
    decode_frame(body).map(|(_, m)| m)
}

/// Decodes one COBS body in place into its protocol version and message. A message newer
/// than its frame's version is malformed: a version-1 peer could not have sent it.
pub fn decode_frame(body: &mut [u8]) -> Result<(u8, Message), FrameError> {
    let n = cobs::decode_in_place(body).map_err(|_| FrameError::Cobs)?;
    let raw = body.get(..n).ok_or(FrameError::Cobs)?;
    if raw.len() < 1 + 1 + CRC_LEN {
        return Err(FrameError::TooShort);
    }
    let (data, crc_bytes) = raw.split_at(raw.len() - CRC_LEN);
    let mut crc = [0u8; CRC_LEN];
    crc.copy_from_slice(crc_bytes);
    if CRC.checksum(data) != u32::from_le_bytes(crc) {
        return Err(FrameError::Crc);
    }
    let version = data[0];
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::Version(version));
    }
    match postcard::take_from_bytes::<Message>(&data[1..]) {
        Ok((msg, [])) if msg.min_version() <= version => Ok((version, msg)),
        _ => Err(FrameError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::*;

    fn sample() -> Message {
        Message::Result(ResultMsg {
            session: 0xdead_beef,
            seq: 7,
            timestamp_ms: 1_700_000_000_000,
            p_abnormal: 0.75,
            class: Class::Cyst,
            confidence: 0.6,
            flags: flags::ABNORMAL,
        })
    }

    fn decode_all(bytes: &[u8]) -> (heapless::Vec<Message, 16>, DecodeStats) {
        let mut d = FrameDecoder::new();
        let mut out = heapless::Vec::new();
        d.feed(bytes, |r| {
            if let Ok(m) = r {
                let _ = out.push(m);
            }
        });
        (out, *d.stats())
    }

    #[test]
    fn round_trip_and_delimiters() {
        let mut buf: FrameBuf = [0; MAX_WIRE_FRAME];
        let n = encode(&sample(), &mut buf).unwrap();
        assert_eq!(buf[0], 0);
        assert_eq!(buf[n - 1], 0);
        assert!(buf[1..n - 1].iter().all(|&b| b != 0));
        let (msgs, stats) = decode_all(&buf[..n]);
        assert_eq!(msgs.as_slice(), &[sample()]);
        assert_eq!(stats.errors(), 0);
    }

    #[test]
    fn largest_hello_fits() {
        let s = |n| {
            let mut st = heapless::String::<32>::new();
            for _ in 0..n {
                st.push('\u{7f}').unwrap();
            }
            st
        };
        let hello = Message::Hello(Hello {
            protocol_version: 255,
            min_protocol_version: 255,
            session: u32::MAX,
            device_id: s(DEVICE_ID_LEN).as_str().try_into().unwrap(),
            model_id: s(MODEL_ID_LEN).as_str().try_into().unwrap(),
            model_version: s(MODEL_VERSION_LEN).as_str().try_into().unwrap(),
        });
        let mut buf: FrameBuf = [0; MAX_WIRE_FRAME];
        let n = encode(&hello, &mut buf).unwrap();
        assert!(n <= MAX_WIRE_FRAME);
        assert_eq!(decode_all(&buf[..n]).0.as_slice(), &[hello]);
    }

    #[test]
    fn small_output_buffer_is_an_error() {
        let mut buf = [0u8; 8];
        assert_eq!(
            encode(&sample(), &mut buf),
            Err(EncodeError::BufferTooSmall)
        );
    }

    #[test]
    fn garbage_then_frame_resyncs() {
        let mut buf: FrameBuf = [0; MAX_WIRE_FRAME];
        let n = encode(&sample(), &mut buf).unwrap();
        let mut stream = heapless::Vec::<u8, 512>::new();
        stream.extend_from_slice(&[1, 2, 3, 0xff, 0x55]).unwrap();
        stream.extend_from_slice(&buf[..n]).unwrap();
        // Over-long garbage without a zero, then a frame.
        stream.extend_from_slice(&[0x42; 200]).unwrap();
        stream.extend_from_slice(&buf[..n]).unwrap();
        let (msgs, stats) = decode_all(&stream);
        assert_eq!(msgs.len(), 2);
        assert_eq!(stats.overflow, 1);
    }

    #[test]
    fn flipped_bit_is_rejected() {
        let mut buf: FrameBuf = [0; MAX_WIRE_FRAME];
        let n = encode(&sample(), &mut buf).unwrap();
        for i in 1..n - 1 {
            for bit in 0..8 {
                let mut f = buf;
                f[i] ^= 1 << bit;
                let (msgs, _) = decode_all(&f[..n]);
                assert!(msgs.is_empty(), "flip at {i}/{bit} accepted");
            }
        }
    }

    #[test]
    fn wrong_version_is_reported() {
        let mut buf: FrameBuf = [0; MAX_WIRE_FRAME];
        // Heartbeat tag; the content does not matter.
        let n = frame_raw(&[PROTOCOL_VERSION + 1, 3], &mut buf).unwrap();
        assert_eq!(
            decode_body(&mut buf[1..n - 1]),
            Err(FrameError::Version(PROTOCOL_VERSION + 1))
        );
        let n = frame_raw(&[PROTOCOL_VERSION, 200], &mut buf).unwrap();
        assert_eq!(decode_body(&mut buf[1..n - 1]), Err(FrameError::Malformed));
    }
}
