//! The DICOM network side (dicom-ul, synchronous): C-ECHO, and C-STORE of queued objects over
//! one association with timeouts on connect, read and write and an explicit release.

use std::io::Write;
use std::net::ToSocketAddrs;
use std::str::FromStr;
use std::time::Duration;

use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::{
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
};
use std::sync::Arc;

use dicom_ul::association::client::{ClientAssociation, ClientAssociationOptions, TlsStream};
use dicom_ul::association::Error as UlError;
use dicom_ul::pdu::{
    AssociationRJResult, PDataValue, PDataValueType, Pdu, PresentationContextResultReason,
};

use crate::status::Action;

/// Where results go: `AET@HOST:PORT`, and who we are to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacsAddr {
    /// The PACS's AE title (called AE).
    pub called_ae: String,
    pub host: String,
    pub port: u16,
    /// Ours (calling AE).
    pub calling_ae: String,
}

/// A PACS address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PACS address {given:?}: {why}; expected AET@HOST:PORT, e.g. ORTHANC@10.0.0.5:4242")]
pub struct AddrError {
    pub given: String,
    pub why: &'static str,
}

/// An AE title: 1 to 16 characters of printable ASCII without backslash, not all spaces.
pub fn valid_ae(ae: &str) -> bool {
    !ae.trim().is_empty()
        && ae.len() <= 16
        && ae.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
}

impl FromStr for PacsAddr {
    type Err = AddrError;

    /// `AET@HOST:PORT`; the calling AE is `RENALSCAN` until set.
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let err = |why| AddrError {
            given: s.to_string(),
            why,
        };
        let (ae, rest) = s.split_once('@').ok_or_else(|| err("no '@'"))?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("no ':PORT'"))?;
        if !valid_ae(ae) {
            return Err(err(
                "the AE title must be 1 to 16 printable ASCII characters",
            ));
        }
        if host.is_empty() {
            return Err(err("no host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| err("the port must be 1..65535"))?;
        Ok(Self {
            called_ae: ae.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            calling_ae: "RENALSCAN".into(),
        })
    }
}

impl std::fmt::Display for PacsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.called_ae, self.host, self.port)
    }
}

/// Timeouts of one association.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Each read and each write.
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            io: Duration::from_secs(15),
        }
    }
}

/// How to reach the PACS: timeouts, and TLS when it speaks DICOM over TLS (PS3.15 B.1).
#[derive(Debug, Clone, Default)]
pub struct LinkOptions {
    pub timeouts: Timeouts,
    /// `None`: plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Why talking to the PACS failed, with what the outbox does about it.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{addr}: cannot connect: {message}")]
    Connect { addr: String, message: String },
    #[error("{addr}: association rejected permanently ({reason}): check the called AE title ({called}), our calling AE title ({calling}) and that the PACS knows this cart")]
    RejectedPermanent {
        addr: String,
        called: String,
        calling: String,
        reason: String,
    },
    #[error("{addr}: association rejected for now ({reason})")]
    RejectedTransient { addr: String, reason: String },
    #[error("{addr}: the PACS accepts none of our presentation contexts for {sop_class}: configure it to accept this SOP class in explicit or implicit VR little endian")]
    NoContext { addr: String, sop_class: String },
    #[error("{addr}: {message}")]
    Link { addr: String, message: String },
    #[error("object {uid}: {message}")]
    Object { uid: String, message: String },
}

impl NetError {
    /// What the outbox does.
    pub fn action(&self) -> Action {
        match self {
            NetError::RejectedPermanent { .. } | NetError::NoContext { .. } => Action::HoldConfig,
            NetError::Object { .. } => Action::Quarantine,
            _ => Action::Backoff,
        }
    }
}

fn ul_error(addr: &PacsAddr, calling: &str, e: UlError) -> NetError {
    let a = addr.to_string();
    match e {
        UlError::Rejected { association_rj, .. } => {
            let reason = format!("{:?}", association_rj.source);
            if association_rj.result == AssociationRJResult::Permanent {
                NetError::RejectedPermanent {
                    addr: a,
                    called: addr.called_ae.clone(),
                    calling: calling.to_string(),
                    reason,
                }
            } else {
                NetError::RejectedTransient { addr: a, reason }
            }
        }
        UlError::NoAcceptedPresentationContexts { .. } => NetError::NoContext {
            addr: a,
            sop_class: "every proposed SOP class".into(),
        },
        UlError::Connect { source, .. } | UlError::ToAddress { source, .. } => NetError::Connect {
            addr: a,
            message: source.to_string(),
        },
        other => NetError::Link {
            addr: a,
            message: other.to_string(),
        },
    }
}

fn options<'a>(addr: &'a PacsAddr, link: &LinkOptions) -> ClientAssociationOptions<'a> {
    let t = link.timeouts;
    let o = ClientAssociationOptions::new()
        .calling_ae_title(addr.calling_ae.as_str())
        .called_ae_title(addr.called_ae.as_str())
        .connection_timeout(t.connect)
        .read_timeout(t.io)
        .write_timeout(t.io);
    match &link.tls {
        Some(c) => o.tls_config(c.clone()).server_name(&addr.host),
        None => o,
    }
}

/// An association over TCP or TLS.
enum Assoc {
    Plain(ClientAssociation<std::net::TcpStream>),
    Tls(Box<ClientAssociation<TlsStream>>),
}

/// Calls the same method on either kind of association.
macro_rules! on_assoc {
    ($a:expr, $x:ident => $e:expr) => {
        match $a {
            Assoc::Plain($x) => $e,
            Assoc::Tls($x) => $e,
        }
    };
}

impl Assoc {
    fn accepted(&self) -> Vec<dicom_ul::pdu::PresentationContextNegotiated> {
        on_assoc!(self, a => a
            .presentation_contexts()
            .iter()
            .filter(|p| p.reason == PresentationContextResultReason::Acceptance)
            .cloned()
            .collect())
    }

    fn send(&mut self, pdu: &Pdu) -> Result<(), UlError> {
        on_assoc!(self, a => a.send(pdu))
    }

    fn receive(&mut self) -> Result<Pdu, UlError> {
        on_assoc!(self, a => a.receive())
    }

    fn send_data(&mut self, pc: u8, data: &[u8]) -> std::io::Result<()> {
        on_assoc!(self, a => {
            let mut w = a.send_pdata(pc);
            w.write_all(data)?;
            w.finish()
        })
    }

    fn release(self) {
        let r = match self {
            Assoc::Plain(a) => a.release(),
            Assoc::Tls(a) => a.release(),
        };
        if let Err(e) = r {
            log::warn!("pacs: release not acknowledged: {e}");
        }
    }

    fn abort(self) {
        let _ = match self {
            Assoc::Plain(a) => a.abort(),
            Assoc::Tls(a) => a.abort(),
        };
    }
}

fn connect(
    addr: &PacsAddr,
    link: &LinkOptions,
    opts: ClientAssociationOptions<'_>,
) -> Result<Assoc, NetError> {
    let sock = (addr.host.as_str(), addr.port)
        .to_socket_addrs()
        .map_err(|e| NetError::Connect {
            addr: addr.to_string(),
            message: format!("cannot resolve {}: {e}", addr.host),
        })?
        .next()
        .ok_or_else(|| NetError::Connect {
            addr: addr.to_string(),
            message: format!("{} resolves to no address", addr.host),
        })?;
    let ul = |e| ul_error(addr, &addr.calling_ae, e);
    if link.tls.is_some() {
        let target = format!("{}@{sock}", addr.called_ae);
        opts.establish_with_tls(&target)
            .map(|a| Assoc::Tls(Box::new(a)))
            .map_err(ul)
    } else {
        opts.establish(sock).map(Assoc::Plain).map_err(ul)
    }
}

/// A DIMSE command set with its group length, encoded as PS3.7 says (implicit VR little
/// endian).
fn command(
    elements: Vec<(dicom_core::Tag, dicom_core::VR, dicom_core::PrimitiveValue)>,
) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    for (t, vr, v) in elements {
        obj.put(dicom_core::DataElement::new(t, vr, v));
    }
    let mut body = Vec::new();
    // Encoding into a Vec cannot fail for these elements.
    let _ = obj.write_dataset_with_ts(&mut body, &IMPLICIT_VR_LITTLE_ENDIAN.erased());
    let mut group = InMemDicomObject::new_empty();
    group.put(dicom_core::DataElement::new(
        tags::COMMAND_GROUP_LENGTH,
        dicom_core::VR::UL,
        dicom_core::PrimitiveValue::from(body.len() as u32),
    ));
    let mut out = Vec::new();
    let _ = group.write_dataset_with_ts(&mut out, &IMPLICIT_VR_LITTLE_ENDIAN.erased());
    out.extend_from_slice(&body);
    out
}

/// A command set as the single PDU that carries it on presentation context `pc`.
pub fn command_pdu(
    pc: u8,
    elements: Vec<(dicom_core::Tag, dicom_core::VR, dicom_core::PrimitiveValue)>,
) -> Pdu {
    Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Command,
            is_last: true,
            data: command(elements),
        }],
    }
}

/// Reads the next response's command set; its Status.
fn read_status(assoc: &mut Assoc, addr: &PacsAddr) -> Result<u16, NetError> {
    let link = |m: String| NetError::Link {
        addr: addr.to_string(),
        message: m,
    };
    let mut cmd = Vec::new();
    loop {
        match assoc
            .receive()
            .map_err(|e| ul_error(addr, &addr.calling_ae, e))?
        {
            Pdu::PData { data } => {
                let mut last = false;
                for pdv in data {
                    if pdv.value_type == PDataValueType::Command {
                        cmd.extend_from_slice(&pdv.data);
                        last |= pdv.is_last;
                    }
                }
                if last {
                    break;
                }
            }
            Pdu::AbortRQ { source } => return Err(link(format!("the PACS aborted: {source:?}"))),
            Pdu::ReleaseRQ => return Err(link("the PACS released mid-operation".into())),
            other => return Err(link(format!("unexpected {}", other.short_description()))),
        }
    }
    let obj = InMemDicomObject::read_dataset_with_ts(&cmd[..], &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| link(format!("unreadable response: {e}")))?;
    obj.element(tags::STATUS)
        .ok()
        .and_then(|e| e.to_int::<u16>().ok())
        .ok_or_else(|| link("response without a Status".into()))
}

/// C-ECHO: whether the PACS answers (and accepts us).
pub fn echo(addr: &PacsAddr, link: &LinkOptions) -> Result<(), NetError> {
    let opts = options(addr, link).with_abstract_syntax(uids::VERIFICATION);
    let mut assoc = connect(addr, link, opts)?;
    let pc = assoc
        .accepted()
        .first()
        .map(|p| p.id)
        .ok_or_else(|| NetError::NoContext {
            addr: addr.to_string(),
            sop_class: "Verification".into(),
        })?;
    use dicom_core::{PrimitiveValue as P, VR};
    let rq = command_pdu(
        pc,
        vec![
            (
                tags::AFFECTED_SOP_CLASS_UID,
                VR::UI,
                P::from(uids::VERIFICATION),
            ),
            (tags::COMMAND_FIELD, VR::US, P::from(0x0030_u16)),
            (tags::MESSAGE_ID, VR::US, P::from(1_u16)),
            (tags::COMMAND_DATA_SET_TYPE, VR::US, P::from(0x0101_u16)),
        ],
    );
    assoc
        .send(&rq)
        .map_err(|e| ul_error(addr, &addr.calling_ae, e))?;
    let status = read_status(&mut assoc, addr)?;
    assoc.release();
    if status == 0 {
        Ok(())
    } else {
        Err(NetError::Link {
            addr: addr.to_string(),
            message: format!("C-ECHO answered {}", crate::status::describe(status)),
        })
    }
}

/// One association for a drain: proposes the SOP classes it will store.
pub struct StoreAssociation {
    assoc: Assoc,
    addr: PacsAddr,
    next_id: u16,
}

impl StoreAssociation {
    /// Opens an association proposing each SOP class in explicit and implicit VR little
    /// endian.
    pub fn open(
        addr: &PacsAddr,
        link: &LinkOptions,
        sop_classes: &[&str],
    ) -> Result<Self, NetError> {
        let mut opts = options(addr, link);
        for c in sop_classes {
            opts = opts.with_presentation_context(
                *c,
                vec![
                    uids::EXPLICIT_VR_LITTLE_ENDIAN,
                    uids::IMPLICIT_VR_LITTLE_ENDIAN,
                ],
            );
        }
        Ok(Self {
            assoc: connect(addr, link, opts)?,
            addr: addr.clone(),
            next_id: 1,
        })
    }

    /// C-STORE of one Part-10 object; the response's status.
    pub fn store(&mut self, part10: &[u8], sop_class: &str, uid: &str) -> Result<u16, NetError> {
        let addr = self.addr.to_string();
        let pc = self
            .assoc
            .accepted()
            .into_iter()
            .find(|p| p.abstract_syntax == sop_class)
            .ok_or_else(|| NetError::NoContext {
                addr: addr.clone(),
                sop_class: sop_class.to_string(),
            })?;
        let data = dataset_in(part10, &pc.transfer_syntax).map_err(|m| NetError::Object {
            uid: uid.to_string(),
            message: m,
        })?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        use dicom_core::{PrimitiveValue as P, VR};
        let rq = command_pdu(
            pc.id,
            vec![
                (tags::AFFECTED_SOP_CLASS_UID, VR::UI, P::from(sop_class)),
                (tags::COMMAND_FIELD, VR::US, P::from(0x0001_u16)),
                (tags::MESSAGE_ID, VR::US, P::from(id)),
                (tags::PRIORITY, VR::US, P::from(0x0000_u16)),
                (tags::COMMAND_DATA_SET_TYPE, VR::US, P::from(0x0000_u16)),
                (tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, P::from(uid)),
            ],
        );
        self.assoc
            .send(&rq)
            .map_err(|e| ul_error(&self.addr, &self.addr.calling_ae, e))?;
        self.assoc
            .send_data(pc.id, &data)
            .map_err(|e| NetError::Link {
                addr: addr.clone(),
                message: format!("sending {uid}: {e}"),
            })?;
        read_status(&mut self.assoc, &self.addr)
    }

    /// Releases the association (A-RELEASE), as every drain ends.
    pub fn release(self) {
        self.assoc.release()
    }

    /// Aborts it (A-ABORT), when the drain stops on an error.
    pub fn abort(self) {
        self.assoc.abort()
    }
}

/// The data set of a Part-10 file in `ts`: the bytes after the meta group when `ts` is the
/// file's own (explicit VR little endian, as [`crate::objects`] writes), else re-encoded.
fn dataset_in(part10: &[u8], ts: &str) -> Result<Vec<u8>, String> {
    if part10.len() < 144 || &part10[128..132] != b"DICM" {
        return Err("not a Part-10 file (no DICM at 128)".into());
    }
    let meta_len = u32::from_le_bytes([part10[140], part10[141], part10[142], part10[143]]);
    let start = 144usize
        .checked_add(meta_len as usize)
        .filter(|s| *s <= part10.len())
        .ok_or("meta group longer than the file")?;
    let file = dicom_object::from_reader(&part10[128..]).map_err(|e| e.to_string())?;
    let file_ts = file
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    if file_ts == ts.trim_end_matches('\0') {
        return Ok(part10[start..].to_vec());
    }
    let target = if ts.trim_end_matches('\0') == uids::IMPLICIT_VR_LITTLE_ENDIAN {
        IMPLICIT_VR_LITTLE_ENDIAN.erased()
    } else if ts.trim_end_matches('\0') == uids::EXPLICIT_VR_LITTLE_ENDIAN {
        EXPLICIT_VR_LITTLE_ENDIAN.erased()
    } else {
        return Err(format!("transfer syntax {ts} was not proposed"));
    };
    let mut out = Vec::new();
    file.write_dataset_with_ts_cs(
        &mut out,
        &target,
        dicom_encoding::text::SpecificCharacterSet::ISO_IR_192,
    )
    .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_why() {
        let a: PacsAddr = "ORTHANC@127.0.0.1:4242".parse().unwrap();
        assert_eq!(
            (a.called_ae.as_str(), a.host.as_str(), a.port),
            ("ORTHANC", "127.0.0.1", 4242)
        );
        assert_eq!(a.to_string(), "ORTHANC@127.0.0.1:4242");
        for bad in [
            "ORTHANC",
            "@h:1",
            "A@:1",
            "A@h",
            "A@h:0",
            "A@h:x",
            "TOOLONGAETITLE1234@h:1",
        ] {
            let e = bad.parse::<PacsAddr>().unwrap_err().to_string();
            assert!(e.contains("AET@HOST:PORT"), "{e}");
        }
    }

    #[test]
    fn the_data_set_is_the_file_after_its_meta_group() {
        let session = crate::sample::session();
        let made = crate::exam_objects(&crate::ExamInput {
            session: &session,
            context: None,
            key_frames: &[],
            equipment: &crate::Equipment::renalscan("c", "0"),
            source: None,
            now_ms: 0,
        })
        .unwrap();
        let sr = &made[0];
        let explicit = dataset_in(&sr.bytes, uids::EXPLICIT_VR_LITTLE_ENDIAN).unwrap();
        assert!(sr.bytes.ends_with(&explicit));
        let implicit = dataset_in(&sr.bytes, uids::IMPLICIT_VR_LITTLE_ENDIAN).unwrap();
        let back = InMemDicomObject::read_dataset_with_ts(
            &implicit[..],
            &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        assert_eq!(
            back.element(tags::SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap(),
            sr.sop_instance_uid
        );
        assert!(dataset_in(b"junk", uids::EXPLICIT_VR_LITTLE_ENDIAN).is_err());
    }
}
