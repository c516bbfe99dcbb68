//! Schema-driven decoding and encoding of whole images: every entry as a reflection
//! `DynamicMessage` plus its raw payload, in the same layout crit uses. Re-encoding a decoded
//! image reproduces it byte for byte (fields are written in field-number order, as protobuf-c and
//! python-protobuf both do).

use prost::Message;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value};

use crate::framing::{FrameError, ImageReader, ImageWriter, Result};
use crate::magic::{Extra, ImageKind, Layout};
use crate::schema;

/// Raw payload carried after an entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Plain bytes (pipe/fifo data, socket queue, ghost content, shm, bpf map data).
    Bytes(Vec<u8>),
    /// TCP receive and send queues.
    Tcp {
        /// Receive queue.
        inq: Vec<u8>,
        /// Send queue.
        outq: Vec<u8>,
    },
    /// SysV semaphore values.
    Sem(Vec<u16>),
    /// SysV queue messages: header and body of each.
    Msgs(Vec<(DynamicMessage, Vec<u8>)>),
}

/// One decoded entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The protobuf message.
    pub msg: DynamicMessage,
    /// Raw payload that followed it, if the image type has one.
    pub extra: Option<Payload>,
}

/// A whole decoded image.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Its type.
    pub kind: &'static ImageKind,
    /// Its entries in file order.
    pub entries: Vec<Entry>,
}

/// Descriptor of a CRIU message; a missing one is a defect of the embedded schema.
pub fn desc(name: &str) -> MessageDescriptor {
    schema::message(name).unwrap_or_else(|| panic!("message {name} missing from proto/"))
}

/// Reads an unsigned integer field of a decoded message (0 when unset or not numeric).
pub fn uint_field(msg: &DynamicMessage, name: &str) -> u64 {
    match msg.get_field_by_name(name).as_deref() {
        Some(Value::U32(v)) => (*v).into(),
        Some(Value::U64(v)) => *v,
        Some(Value::I32(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Value::I64(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Value::Bool(b)) => (*b).into(),
        _ => 0,
    }
}

fn missing_required(msg: &DynamicMessage, prefix: &str) -> Option<String> {
    for f in msg.descriptor().fields() {
        if f.cardinality() == prost_reflect::Cardinality::Required && !msg.has_field(&f) {
            return Some(format!("{prefix}{}", f.name()));
        }
    }
    for (f, v) in msg.fields() {
        if !matches!(f.kind(), Kind::Message(_)) {
            continue;
        }
        let p = format!("{prefix}{}.", f.name());
        match v {
            Value::Message(m) => {
                if let Some(x) = missing_required(m, &p) {
                    return Some(x);
                }
            }
            Value::List(l) => {
                for m in l.iter().filter_map(Value::as_message) {
                    if let Some(x) = missing_required(m, &p) {
                        return Some(x);
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// Decodes one protobuf message strictly (required fields must be present).
pub fn decode_msg(
    file: &str,
    off: u64,
    d: &MessageDescriptor,
    bytes: &[u8],
) -> Result<DynamicMessage> {
    let bad = |reason: String| FrameError::BadMessage {
        file: file.to_string(),
        offset: off,
        message: d.name().to_string(),
        reason,
    };
    let m = DynamicMessage::decode(d.clone(), bytes).map_err(|e| bad(e.to_string()))?;
    if let Some(f) = missing_required(&m, "") {
        return Err(bad(format!("required field {f} is missing")));
    }
    Ok(m)
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

fn read_entry(r: &mut ImageReader<'_>, d: &MessageDescriptor) -> Result<Option<DynamicMessage>> {
    let file = r.file().to_string();
    match r.next_frame()? {
        None => Ok(None),
        Some((off, b)) => decode_msg(&file, off, d, b).map(Some),
    }
}

fn read_extra(r: &mut ImageReader<'_>, e: Extra, m: &DynamicMessage) -> Result<Payload> {
    let name = r.kind().name;
    Ok(match e {
        Extra::PipeData => Payload::Bytes(
            r.raw(uint_field(m, "bytes"), &format!("{name} data"))?
                .to_vec(),
        ),
        Extra::SkQueue => Payload::Bytes(
            r.raw(uint_field(m, "length"), "socket queue data")?
                .to_vec(),
        ),
        Extra::BpfmapData => {
            let n = uint_field(m, "keys_bytes").saturating_add(uint_field(m, "values_bytes"));
            Payload::Bytes(r.raw(n, "bpf map data")?.to_vec())
        }
        Extra::TcpStream => {
            let inq = r
                .raw(uint_field(m, "inq_len"), "tcp receive queue")?
                .to_vec();
            let outq = r.raw(uint_field(m, "outq_len"), "tcp send queue")?.to_vec();
            Payload::Tcp { inq, outq }
        }
        Extra::IpcShm => {
            let size = uint_field(m, "size");
            let data = r.raw(size, "shm contents")?.to_vec();
            r.raw(round_up(size, 4) - size, "shm padding")?;
            Payload::Bytes(data)
        }
        Extra::IpcSem => {
            let size = uint_field(m, "nsems").saturating_mul(2);
            let data = r.raw(size, "semaphore values")?;
            r.raw(round_up(size, 8) - size, "semaphore padding")?;
            Payload::Sem(
                data.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            )
        }
        Extra::IpcMsg => {
            let d = desc("ipc_msg");
            let mut v = Vec::new();
            for _ in 0..uint_field(m, "qnum") {
                let Some(hdr) = read_entry(r, &d)? else {
                    return Err(FrameError::Invalid {
                        file: r.file().to_string(),
                        offset: r.offset(),
                        problem: "message queue ends before qnum messages".into(),
                    });
                };
                let size = uint_field(&hdr, "msize");
                let body = r.raw(size, "queued message")?.to_vec();
                r.raw(round_up(size, 8) - size, "queued message padding")?;
                v.push((hdr, body));
            }
            Payload::Msgs(v)
        }
    })
}

/// Decodes a whole image held in memory. With `expected`, the type magic must match it.
pub fn decode(file: &str, data: &[u8], expected: Option<&ImageKind>) -> Result<Image> {
    let mut r = match expected {
        Some(k) => ImageReader::expect(file, data, k)?,
        None => ImageReader::new(file, data)?,
    };
    let kind = r.kind();
    let first = desc(kind.message);
    let mut entries = Vec::new();
    match kind.layout {
        Layout::Plain => {
            while let Some(msg) = read_entry(&mut r, &first)? {
                entries.push(Entry { msg, extra: None });
            }
        }
        Layout::Extra(e) => {
            while let Some(msg) = read_entry(&mut r, &first)? {
                let extra = Some(read_extra(&mut r, e, &msg)?);
                entries.push(Entry { msg, extra });
            }
        }
        Layout::Pagemap => {
            let rest = desc("pagemap_entry");
            let mut d = &first;
            while let Some(msg) = read_entry(&mut r, d)? {
                entries.push(Entry { msg, extra: None });
                d = &rest;
            }
        }
        Layout::GhostFile => {
            let Some(msg) = read_entry(&mut r, &first)? else {
                return Err(FrameError::Invalid {
                    file: file.to_string(),
                    offset: r.offset(),
                    problem: "ghost file image has no ghost_file_entry".into(),
                });
            };
            if uint_field(&msg, "chunks") != 0 {
                entries.push(Entry { msg, extra: None });
                let chunk = desc("ghost_chunk_entry");
                while let Some(c) = read_entry(&mut r, &chunk)? {
                    let data = r.raw(uint_field(&c, "len"), "ghost file chunk")?.to_vec();
                    entries.push(Entry {
                        msg: c,
                        extra: Some(Payload::Bytes(data)),
                    });
                }
            } else {
                let data = r.rest().to_vec();
                entries.push(Entry {
                    msg,
                    extra: Some(Payload::Bytes(data)),
                });
            }
        }
    }
    Ok(Image { kind, entries })
}

impl Image {
    /// Encodes the image back to its file bytes.
    pub fn encode(&self, file: &str) -> Result<Vec<u8>> {
        let mut w = ImageWriter::new(Vec::new(), file, self.kind)?;
        for e in &self.entries {
            w.write_frame(&e.msg.encode_to_vec())?;
            match &e.extra {
                None => {}
                Some(Payload::Bytes(b)) => {
                    w.write_raw(b)?;
                    let pad = match self.kind.layout {
                        Layout::Extra(Extra::IpcShm) => {
                            round_up(b.len() as u64, 4) - b.len() as u64
                        }
                        _ => 0,
                    };
                    w.write_raw(&vec![0; pad as usize])?;
                }
                Some(Payload::Tcp { inq, outq }) => {
                    w.write_raw(inq)?;
                    w.write_raw(outq)?;
                }
                Some(Payload::Sem(v)) => {
                    let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    w.write_raw(&b)?;
                    let pad = round_up(b.len() as u64, 8) - b.len() as u64;
                    w.write_raw(&vec![0; pad as usize])?;
                }
                Some(Payload::Msgs(v)) => {
                    for (hdr, body) in v {
                        w.write_frame(&hdr.encode_to_vec())?;
                        w.write_raw(body)?;
                        let pad = round_up(body.len() as u64, 8) - body.len() as u64;
                        w.write_raw(&vec![0; pad as usize])?;
                    }
                }
            }
        }
        w.finish()
    }
}
