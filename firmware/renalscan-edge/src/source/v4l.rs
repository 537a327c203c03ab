//! V4L2 capture from a USB probe, through the `v4l` crate.
//!
//! Format choice is a pure function of what the driver offers ([`choose_format`]) so it is
//! tested without hardware. Pixel conversion is usimage's (`v4l2::decode_buffer`), the same
//! code the host uses. The device is reopened with backoff when the probe is unplugged
//! (dequeue fails or times out).

use std::path::{Path, PathBuf};
use std::time::Duration;

use usimage::v4l2::{decode_buffer, PixelFormat};
use usimage::GreyFrame;
use v4l::buffer::{Flags as BufFlags, Type};
use v4l::capability::Flags as CapFlags;
use v4l::format::FourCC;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::prelude::Device;
use v4l::video::Capture;

use super::{FrameMeta, Source, SourceError};
use crate::config::V4lConfig;

/// Parses a fourcc name from the config (`GREY`, `YUYV`, `MJPG`/`MJPEG`).
pub fn parse_fourcc(s: &str) -> Option<PixelFormat> {
    PixelFormat::from_fourcc(s)
}

/// The fourcc bytes of a format we accept.
pub fn fourcc_of(f: PixelFormat) -> [u8; 4] {
    f.fourcc()
}

fn format_of(fcc: &[u8; 4]) -> Option<PixelFormat> {
    std::str::from_utf8(fcc).ok().and_then(parse_fourcc)
}

/// One pixel format a device offers, with its frame sizes (empty: any size, the driver
/// adjusts).
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub fourcc: [u8; 4],
    pub description: String,
    pub sizes: Vec<(u32, u32)>,
}

/// What to capture: format and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
}

/// Picks the first preferred format the device offers, at the offered size closest to the
/// wanted one (exact if available; ties go to the larger size, more pixels for detection).
pub fn choose_format(offers: &[Offer], prefs: &[PixelFormat], want: (u32, u32)) -> Option<Choice> {
    for &p in prefs {
        let Some(o) = offers.iter().find(|o| format_of(&o.fourcc) == Some(p)) else {
            continue;
        };
        let (width, height) = if o.sizes.is_empty() {
            want
        } else {
            let dist = |&(w, h): &(u32, u32)| {
                let d = i64::from(w) * i64::from(h) - i64::from(want.0) * i64::from(want.1);
                (
                    d.unsigned_abs(),
                    std::cmp::Reverse(u64::from(w) * u64::from(h)),
                )
            };
            *o.sizes.iter().min_by_key(|s| dist(s))?
        };
        return Some(Choice {
            format: p,
            width,
            height,
        });
    }
    None
}

/// A video device as `probes` reports it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub path: PathBuf,
    pub name: String,
    pub driver: String,
    pub bus: String,
    pub capture: bool,
    pub offers: Vec<Offer>,
    /// Frame rates per (format, size), as text.
    pub rates: Vec<String>,
    /// Why it could not be queried, if it could not.
    pub error: Option<String>,
}

/// `/dev/video*` nodes, in number order.
pub fn device_nodes() -> Vec<PathBuf> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_string();
                    let n = name.strip_prefix("video")?.parse::<u32>().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| p).collect()
}

fn sysfs_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| std::fs::read_to_string(format!("/sys/class/video4linux/{n}/name")).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn offers_of(dev: &Device) -> std::io::Result<Vec<Offer>> {
    let mut offers = Vec::new();
    for f in dev.enum_formats()? {
        let mut sizes = Vec::new();
        for fs in dev.enum_framesizes(f.fourcc).unwrap_or_default() {
            match fs.size {
                FrameSizeEnum::Discrete(d) => sizes.push((d.width, d.height)),
                // Stepwise: the extremes are enough to choose and to report.
                FrameSizeEnum::Stepwise(s) => {
                    sizes.push((s.min_width, s.min_height));
                    sizes.push((s.max_width, s.max_height));
                }
            }
        }
        offers.push(Offer {
            fourcc: f.fourcc.repr,
            description: f.description,
            sizes,
        });
    }
    Ok(offers)
}

/// Queries one device (formats, sizes, rates).
pub fn query(path: &Path) -> DeviceInfo {
    let mut info = DeviceInfo {
        path: path.to_path_buf(),
        name: sysfs_name(path),
        driver: String::new(),
        bus: String::new(),
        capture: false,
        offers: Vec::new(),
        rates: Vec::new(),
        error: None,
    };
    let dev = match Device::with_path(path) {
        Ok(d) => d,
        Err(e) => {
            info.error = Some(format!("cannot open: {e}"));
            return info;
        }
    };
    match dev.query_caps() {
        Ok(c) => {
            info.driver = c.driver;
            info.bus = c.bus;
            if info.name.is_empty() {
                info.name = c.card;
            }
            info.capture = c.capabilities.contains(CapFlags::VIDEO_CAPTURE);
        }
        Err(e) => info.error = Some(format!("VIDIOC_QUERYCAP failed: {e}")),
    }
    if !info.capture {
        return info;
    }
    match offers_of(&dev) {
        Ok(o) => info.offers = o,
        Err(e) => info.error = Some(format!("VIDIOC_ENUM_FMT failed: {e}")),
    }
    for o in &info.offers {
        for &(w, h) in &o.sizes {
            if let Ok(iv) = dev.enum_frameintervals(FourCC::new(&o.fourcc), w, h) {
                let rates: Vec<String> = iv.iter().map(|i| i.interval.to_string()).collect();
                if !rates.is_empty() {
                    info.rates.push(format!(
                        "{} {w}x{h}: {}",
                        String::from_utf8_lossy(&o.fourcc),
                        rates.join(", ")
                    ));
                }
            }
        }
    }
    info
}

/// Every video device and what it offers.
pub fn list_devices() -> Vec<DeviceInfo> {
    device_nodes().iter().map(|p| query(p)).collect()
}

/// Capture from a V4L2 device.
pub struct V4lSource {
    cfg: V4lConfig,
    prefs: Vec<PixelFormat>,
    /// Open device and its stream (the stream holds the device's handle).
    open: Option<OpenDevice>,
}

struct OpenDevice {
    stream: Stream<'static>,
    path: PathBuf,
    choice: Choice,
    stride: usize,
    _dev: Device,
}

impl V4lSource {
    pub fn new(cfg: &V4lConfig) -> Self {
        let prefs = cfg.formats.iter().filter_map(|f| parse_fourcc(f)).collect();
        Self {
            cfg: cfg.clone(),
            prefs,
            open: None,
        }
    }

    fn candidates(&self) -> Vec<PathBuf> {
        if self.cfg.device == "auto" {
            device_nodes()
        } else {
            vec![PathBuf::from(&self.cfg.device)]
        }
    }

    fn open_one(&self, path: &Path) -> Result<OpenDevice, String> {
        let dev = Device::with_path(path).map_err(|e| format!("cannot open: {e}"))?;
        let caps = dev
            .query_caps()
            .map_err(|e| format!("VIDIOC_QUERYCAP: {e}"))?;
        if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) {
            return Err("not a video capture device".into());
        }
        let offers = offers_of(&dev).map_err(|e| format!("VIDIOC_ENUM_FMT: {e}"))?;
        let choice = choose_format(&offers, &self.prefs, (self.cfg.width, self.cfg.height))
            .ok_or_else(|| {
                format!(
                    "offers none of the accepted formats {:?} (it has {})",
                    self.cfg.formats,
                    offers
                        .iter()
                        .map(|o| String::from_utf8_lossy(&o.fourcc).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let want = v4l::Format::new(
            choice.width,
            choice.height,
            FourCC::new(&fourcc_of(choice.format)),
        );
        let got = dev
            .set_format(&want)
            .map_err(|e| format!("VIDIOC_S_FMT: {e}"))?;
        let format = format_of(&got.fourcc.repr)
            .ok_or_else(|| format!("driver switched to {}", got.fourcc))?;
        if self.cfg.fps > 0 {
            // Not every driver supports setting the rate; capture at its own is fine.
            if let Err(e) = dev.set_params(&v4l::video::capture::Parameters::with_fps(self.cfg.fps))
            {
                log::warn!("{}: cannot set {} fps: {e}", path.display(), self.cfg.fps);
            }
        }
        let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, self.cfg.buffers.max(2))
            .map_err(|e| format!("mapping buffers: {e}"))?;
        stream.set_timeout(Duration::from_millis(self.cfg.timeout_ms.max(1)));
        log::info!(
            "{}: {} {}x{} (stride {})",
            path.display(),
            got.fourcc,
            got.width,
            got.height,
            got.stride
        );
        Ok(OpenDevice {
            stream,
            path: path.to_path_buf(),
            choice: Choice {
                format,
                width: got.width,
                height: got.height,
            },
            stride: got.stride as usize,
            _dev: dev,
        })
    }
}

impl Source for V4lSource {
    fn describe(&self) -> String {
        match &self.open {
            Some(o) => format!("v4l2 {} ({:?})", o.path.display(), o.choice.format),
            None => format!("v4l2 {}", self.cfg.device),
        }
    }

    fn open(&mut self) -> Result<(), SourceError> {
        let nodes = self.candidates();
        if nodes.is_empty() {
            return Err(SourceError::Lost(
                "no V4L2 video device (/dev/video*) present: is the probe plugged in?".into(),
            ));
        }
        let mut why = Vec::new();
        for p in nodes {
            match self.open_one(&p) {
                Ok(o) => {
                    self.open = Some(o);
                    return Ok(());
                }
                Err(e) => why.push(format!("{}: {e}", p.display())),
            }
        }
        Err(SourceError::Lost(why.join("; ")))
    }

    fn read(&mut self, out: &mut GreyFrame) -> Result<FrameMeta, SourceError> {
        let o = self
            .open
            .as_mut()
            .ok_or_else(|| SourceError::Lost("not open".into()))?;
        let (buf, meta) = match o.stream.next() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                return Err(SourceError::Corrupt("interrupted".into()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(SourceError::Lost(format!(
                    "no frame for {} ms",
                    self.cfg.timeout_ms
                )))
            }
            Err(e) => return Err(SourceError::Lost(e.to_string())),
        };
        if meta.flags.contains(BufFlags::ERROR) {
            return Err(SourceError::Corrupt("driver flagged the buffer".into()));
        }
        let used = match meta.bytesused as usize {
            0 => buf.len(),
            n => n.min(buf.len()),
        };
        let c = o.choice;
        decode_buffer(c.format, &buf[..used], c.width, c.height, o.stride, out)
            .map_err(|e| SourceError::Corrupt(e.to_string()))?;
        Ok(FrameMeta {
            index: u64::from(meta.sequence),
        })
    }

    fn close(&mut self) {
        if let Some(o) = self.open.take() {
            // v4l's stream panics in drop when STREAMOFF fails with anything but ENODEV;
            // an unplugged probe must not take the runtime down with it.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(o)));
            if r.is_err() {
                log::warn!("v4l2: stream teardown failed (device gone)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(f: &[u8; 4], sizes: &[(u32, u32)]) -> Offer {
        Offer {
            fourcc: *f,
            description: String::new(),
            sizes: sizes.to_vec(),
        }
    }

    #[test]
    fn prefers_grey_then_yuyv_then_mjpeg() {
        let prefs = [PixelFormat::Grey, PixelFormat::Yuyv, PixelFormat::Mjpeg];
        let offers = [
            offer(b"MJPG", &[(1280, 720)]),
            offer(b"YUYV", &[(640, 480), (1024, 768)]),
        ];
        let c = choose_format(&offers, &prefs, (1024, 768)).unwrap();
        assert_eq!(
            c,
            Choice {
                format: PixelFormat::Yuyv,
                width: 1024,
                height: 768
            }
        );
        let only_mjpeg = [offer(b"MJPG", &[(640, 480), (1920, 1080)])];
        let c = choose_format(&only_mjpeg, &prefs, (1024, 768)).unwrap();
        assert_eq!((c.format, c.width), (PixelFormat::Mjpeg, 640));
        assert!(choose_format(&[offer(b"NV12", &[(640, 480)])], &prefs, (640, 480)).is_none());
    }

    #[test]
    fn any_size_offer_takes_the_wanted_size() {
        let c = choose_format(&[offer(b"GREY", &[])], &[PixelFormat::Grey], (800, 600)).unwrap();
        assert_eq!((c.width, c.height), (800, 600));
    }

    #[test]
    fn fourcc_names_parse() {
        assert_eq!(parse_fourcc("mjpeg"), Some(PixelFormat::Mjpeg));
        assert_eq!(parse_fourcc("YUYV"), Some(PixelFormat::Yuyv));
        assert_eq!(parse_fourcc("NV12"), None);
    }

    #[test]
    fn missing_device_is_a_clear_lost_error() {
        let cfg = V4lConfig {
            device: "/dev/video-renalscan-test-none".into(),
            ..V4lConfig::default()
        };
        let mut s = V4lSource::new(&cfg);
        let err = s.open().unwrap_err().to_string();
        assert!(err.contains("/dev/video-renalscan-test-none"), "{err}");
    }
}
