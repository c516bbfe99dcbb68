//! crit-compatible JSON: `{"magic": NAME, "entries": [...]}` with each entry's fields by name,
//! bytes as base64 (`encodebytes` style), enums by name, and raw payloads as `"extra"`. In pretty
//! mode the `(criu)` field options apply: hex integers, flag names, `major:minor` devices, IP
//! strings and value names, exactly as crit prints them. Parsing accepts both forms.

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, Value};
use serde_json::{Map, Value as J};

use crate::dynamic::{desc, Entry, Image, Payload};
use crate::magic::{Extra, ImageKind, Layout};
use crate::pretty::{self, b64_decode, b64_encode};
use crate::schema::{criu_opts, CriuOpts};

/// A JSON document that does not describe a valid image.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {path}: {problem}")]
pub struct JsonError {
    /// Input file.
    pub file: String,
    /// JSON path of the offending value (`entries[2].tc.comm`).
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

/// A JSON value that keeps object keys in insertion (protobuf field-number) order, as crit
/// prints them; `serde_json::Value` would sort them.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `null` (an enum value the schema does not know).
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Num(serde_json::Number),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Node>),
    /// An object, keys in order.
    Obj(Vec<(String, Node)>),
}

impl Node {
    /// The same value as a `serde_json::Value` (for comparisons).
    pub fn to_value(&self) -> J {
        match self {
            Node::Null => J::Null,
            Node::Bool(b) => J::Bool(*b),
            Node::Num(n) => J::Number(n.clone()),
            Node::Str(s) => J::String(s.clone()),
            Node::Arr(a) => J::Array(a.iter().map(Node::to_value).collect()),
            Node::Obj(o) => J::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }

    fn num(n: impl Into<serde_json::Number>) -> Node {
        Node::Num(n.into())
    }
}

impl serde::Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Num(n) => n.serialize(s),
            Node::Str(x) => s.serialize_str(x),
            Node::Arr(a) => {
                let mut q = s.serialize_seq(Some(a.len()))?;
                for x in a {
                    q.serialize_element(x)?;
                }
                q.end()
            }
            Node::Obj(o) => {
                let mut m = s.serialize_map(Some(o.len()))?;
                for (k, v) in o {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

/// Converts a decoded image to crit's JSON shape.
pub fn image_to_json(img: &Image, pretty: bool) -> Node {
    let entries: Vec<Node> = img
        .entries
        .iter()
        .map(|e| entry_to_json(e, pretty))
        .collect();
    Node::Obj(vec![
        ("magic".into(), Node::Str(img.kind.name.into())),
        ("entries".into(), Node::Arr(entries)),
    ])
}

fn entry_to_json(e: &Entry, pretty: bool) -> Node {
    let mut o = msg_to_json(&e.msg, pretty, false);
    if let Some(x) = &e.extra {
        let v = match x {
            Payload::Bytes(b) => Node::Str(b64_encode(b)),
            Payload::Tcp { inq, outq } => Node::Obj(vec![
                ("inq".into(), Node::Str(b64_encode(inq))),
                ("outq".into(), Node::Str(b64_encode(outq))),
            ]),
            Payload::Sem(v) => Node::Arr(v.iter().map(|x| Node::num(*x)).collect()),
            Payload::Msgs(v) => Node::Arr(
                v.iter()
                    .flat_map(|(h, b)| {
                        [
                            Node::Obj(msg_to_json(h, false, false)),
                            Node::Str(b64_encode(b)),
                        ]
                    })
                    .collect(),
            ),
        };
        o.push(("extra".into(), v));
    }
    Node::Obj(o)
}

/// One message as an ordered JSON object (crit's `pb2dict`).
pub fn msg_to_json(m: &DynamicMessage, pretty: bool, hex: bool) -> Vec<(String, Node)> {
    let mut o = Vec::new();
    let mut fields: Vec<(FieldDescriptor, &Value)> = m.fields().collect();
    fields.sort_by_key(|(f, _)| f.number());
    for (f, v) in fields {
        let opts = criu_opts(&f);
        let hex = hex || opts.hex;
        let out = match v {
            Value::List(items) => {
                let words: Vec<u32> = items.iter().filter_map(Value::as_u32).collect();
                match pretty::format_ip(&words).filter(|_| pretty && opts.ipadd) {
                    Some(s) => Node::Arr(vec![Node::Str(s)]),
                    None => Node::Arr(
                        items
                            .iter()
                            .map(|x| scalar(&f, &opts, x, pretty, hex))
                            .collect(),
                    ),
                }
            }
            x => scalar(&f, &opts, x, pretty, hex),
        };
        o.push((f.name().to_string(), out));
    }
    o
}

fn int_of(v: &Value) -> Option<i128> {
    Some(match v {
        Value::I32(x) => (*x).into(),
        Value::I64(x) => (*x).into(),
        Value::U32(x) => (*x).into(),
        Value::U64(x) => (*x).into(),
        _ => return None,
    })
}

fn hex_of(v: i128) -> String {
    if v < 0 {
        format!("-0x{:x}", -v)
    } else {
        format!("0x{v:x}")
    }
}

fn float(x: f64) -> Node {
    serde_json::Number::from_f64(x)
        .map(Node::Num)
        .unwrap_or(Node::Null)
}

fn scalar(f: &FieldDescriptor, o: &CriuOpts, v: &Value, pretty: bool, hex: bool) -> Node {
    match v {
        Value::Message(m) => Node::Obj(msg_to_json(m, pretty, hex)),
        Value::Bool(b) => Node::Bool(*b),
        Value::String(s) => Node::Str(s.clone()),
        Value::Bytes(b) => {
            if o.conv.as_deref() == Some("unix_name") {
                Node::Str(pretty::qp_encode(b))
            } else {
                Node::Str(b64_encode(b))
            }
        }
        Value::EnumNumber(n) => match f.kind() {
            Kind::Enum(e) => e
                .get_value(*n)
                .map(|v| Node::Str(v.name().to_string()))
                .unwrap_or(Node::Null),
            _ => Node::num(*n),
        },
        Value::F32(x) => float((*x).into()),
        Value::F64(x) => float(*x),
        other => {
            let Some(n) = int_of(other) else {
                return Node::Null;
            };
            if pretty {
                if hex {
                    return Node::Str(hex_of(n));
                }
                if o.dev || o.odev {
                    return Node::Str(pretty::format_dev(n as u64, o.odev));
                }
                if let Some(t) = &o.flags {
                    return Node::Str(match pretty::flag_table(t) {
                        Some(table) => pretty::map_flags(n as u64, table),
                        None => hex_of(n),
                    });
                }
                if let Some(d) = &o.dict {
                    if let Some(name) = pretty::dict_lookup(d, f.name(), n) {
                        return Node::Str(name.to_string());
                    }
                }
            }
            match other {
                Value::I32(x) => Node::num(*x),
                Value::I64(x) => Node::num(*x),
                Value::U32(x) => Node::num(*x),
                Value::U64(x) => Node::num(*x),
                _ => Node::Null,
            }
        }
    }
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, path: &str, problem: impl Into<String>) -> JsonError {
        JsonError {
            file: self.file.to_string(),
            path: path.to_string(),
            problem: problem.into(),
        }
    }
}

/// Parses crit-shaped JSON back into an image (`file` names the input in errors).
pub fn json_to_image(file: &str, v: &J) -> Result<Image, JsonError> {
    let cx = Ctx { file };
    let magic = v
        .get("magic")
        .and_then(J::as_str)
        .ok_or_else(|| cx.err("magic", "missing or not a string"))?;
    let kind = ImageKind::by_name(magic)
        .ok_or_else(|| cx.err("magic", format!("unknown image type {magic:?}")))?;
    let arr = v
        .get("entries")
        .and_then(J::as_array)
        .ok_or_else(|| cx.err("entries", "missing or not an array"))?;
    let mut entries = Vec::with_capacity(arr.len());
    let mut ghost_chunks = false;
    for (i, e) in arr.iter().enumerate() {
        let path = format!("entries[{i}]");
        let obj = e
            .as_object()
            .ok_or_else(|| cx.err(&path, "entry is not an object"))?;
        let mname = match kind.layout {
            Layout::Pagemap if i > 0 => "pagemap_entry",
            Layout::GhostFile if i > 0 => "ghost_chunk_entry",
            _ => kind.message,
        };
        let msg = json_to_msg(&cx, &path, &desc(mname), obj, true)?;
        let extra_v = obj.get("extra");
        let xp = format!("{path}.extra");
        let bytes = |x: Option<&J>| -> Result<Vec<u8>, JsonError> {
            match x {
                None => Ok(Vec::new()),
                Some(J::String(s)) => b64_decode(s).ok_or_else(|| cx.err(&xp, "invalid base64")),
                Some(_) => Err(cx.err(&xp, "expected a base64 string")),
            }
        };
        let extra = match kind.layout {
            Layout::Plain | Layout::Pagemap => None,
            Layout::GhostFile => {
                if i == 0 {
                    ghost_chunks = crate::dynamic::uint_field(&msg, "chunks") != 0;
                }
                if i == 0 && ghost_chunks {
                    None
                } else {
                    Some(Payload::Bytes(bytes(extra_v)?))
                }
            }
            Layout::Extra(Extra::TcpStream) => {
                let g = |k: &str| bytes(extra_v.and_then(|x| x.get(k)));
                Some(Payload::Tcp {
                    inq: g("inq")?,
                    outq: g("outq")?,
                })
            }
            Layout::Extra(Extra::IpcSem) => {
                let a = extra_v
                    .and_then(J::as_array)
                    .ok_or_else(|| cx.err(&xp, "expected an array of semaphore values"))?;
                let v = a
                    .iter()
                    .map(|x| x.as_u64().and_then(|n| u16::try_from(n).ok()))
                    .collect::<Option<Vec<u16>>>()
                    .ok_or_else(|| cx.err(&xp, "semaphore values must be 0..=65535"))?;
                Some(Payload::Sem(v))
            }
            Layout::Extra(Extra::IpcMsg) => {
                let a = extra_v
                    .and_then(J::as_array)
                    .ok_or_else(|| cx.err(&xp, "expected [msg, data, ...]"))?;
                let mut v = Vec::new();
                for (j, pair) in a.chunks(2).enumerate() {
                    let p = format!("{xp}[{}]", 2 * j);
                    let h = pair[0]
                        .as_object()
                        .ok_or_else(|| cx.err(&p, "expected an ipc_msg object"))?;
                    let h = json_to_msg(&cx, &p, &desc("ipc_msg"), h, false)?;
                    v.push((h, bytes(pair.get(1))?));
                }
                Some(Payload::Msgs(v))
            }
            Layout::Extra(_) => Some(Payload::Bytes(bytes(extra_v)?)),
        };
        entries.push(Entry { msg, extra });
    }
    Ok(Image { kind, entries })
}

fn json_to_msg(
    cx: &Ctx<'_>,
    path: &str,
    d: &prost_reflect::MessageDescriptor,
    obj: &Map<String, J>,
    top: bool,
) -> Result<DynamicMessage, JsonError> {
    let mut m = DynamicMessage::new(d.clone());
    for (k, v) in obj {
        if top && k == "extra" {
            continue;
        }
        let p = format!("{path}.{k}");
        let f = d
            .get_field_by_name(k)
            .ok_or_else(|| cx.err(&p, format!("{} has no field {k:?}", d.name())))?;
        let o = criu_opts(&f);
        let val = if f.is_list() {
            let a = v
                .as_array()
                .ok_or_else(|| cx.err(&p, "expected an array"))?;
            let mut items = Vec::with_capacity(a.len());
            if o.ipadd && a.first().is_some_and(J::is_string) {
                let s = a[0].as_str().unwrap_or_default();
                let words = pretty::parse_ip(s)
                    .ok_or_else(|| cx.err(&p, format!("bad IP address {s:?}")))?;
                items.extend(words.into_iter().map(Value::U32));
            } else {
                for (i, x) in a.iter().enumerate() {
                    items.push(to_value(cx, &format!("{p}[{i}]"), &f, &o, x)?);
                }
            }
            Value::List(items)
        } else {
            to_value(cx, &p, &f, &o, v)?
        };
        m.set_field(&f, val);
    }
    Ok(m)
}

fn to_value(
    cx: &Ctx<'_>,
    p: &str,
    f: &FieldDescriptor,
    o: &CriuOpts,
    v: &J,
) -> Result<Value, JsonError> {
    let kind = f.kind();
    if let Kind::Message(md) = &kind {
        let obj = v
            .as_object()
            .ok_or_else(|| cx.err(p, "expected an object"))?;
        return Ok(Value::Message(json_to_msg(cx, p, md, obj, false)?));
    }
    match kind {
        Kind::Bool => v
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| cx.err(p, "expected true or false")),
        Kind::String => v
            .as_str()
            .map(|s| Value::String(s.to_string()))
            .ok_or_else(|| cx.err(p, "expected a string")),
        Kind::Bytes => {
            let s = v.as_str().ok_or_else(|| cx.err(p, "expected a string"))?;
            let b = if o.conv.as_deref() == Some("unix_name") {
                pretty::qp_decode(s)
            } else {
                b64_decode(s).ok_or_else(|| cx.err(p, "invalid base64"))?
            };
            Ok(Value::Bytes(b.into()))
        }
        Kind::Enum(e) => {
            let n = match v {
                J::String(s) => e.get_value_by_name(s).map(|x| x.number()),
                J::Number(n) => n.as_i64().and_then(|x| i32::try_from(x).ok()),
                _ => None,
            };
            n.map(Value::EnumNumber)
                .ok_or_else(|| cx.err(p, format!("not a value of enum {}: {v}", e.name())))
        }
        Kind::Float | Kind::Double => {
            let x = v.as_f64().ok_or_else(|| cx.err(p, "expected a number"))?;
            Ok(if matches!(kind, Kind::Float) {
                Value::F32(x as f32)
            } else {
                Value::F64(x)
            })
        }
        _ => {
            let n = match v {
                J::Number(n) => n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from)),
                J::String(s) => parse_int_field(f, o, s),
                _ => None,
            }
            .ok_or_else(|| cx.err(p, format!("expected an integer, got {v}")))?;
            let range = || cx.err(p, format!("{n} is out of range for {:?}", f.kind()));
            Ok(match f.kind() {
                Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                    Value::I32(i32::try_from(n).map_err(|_| range())?)
                }
                Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                    Value::I64(i64::try_from(n).map_err(|_| range())?)
                }
                Kind::Uint32 | Kind::Fixed32 => Value::U32(u32::try_from(n).map_err(|_| range())?),
                _ => Value::U64(u64::try_from(n).map_err(|_| range())?),
            })
        }
    }
}

fn parse_int_field(f: &FieldDescriptor, o: &CriuOpts, s: &str) -> Option<i128> {
    if o.dev || o.odev {
        return pretty::parse_dev(s, o.odev).map(i128::from);
    }
    if let Some(t) = o.flags.as_deref().and_then(pretty::flag_table) {
        return pretty::unmap_flags(s, t).map(i128::from);
    }
    if let Some(d) = &o.dict {
        if let Some(v) = pretty::dict_reverse(d, f.name(), s) {
            return Some(v.into());
        }
    }
    pretty::parse_int(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str, pretty: bool) -> J {
        let v: J = serde_json::from_str(text).unwrap();
        let img = json_to_image("t.json", &v).unwrap();
        let bytes = img.encode("t.img").unwrap();
        let back = crate::dynamic::decode("t.img", &bytes, None).unwrap();
        let out = image_to_json(&back, pretty).to_value();
        assert_eq!(out, v, "round trip changed the JSON");
        out
    }

    const FOWN: &str = r#"{"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}"#;
    const OPTS: &str = r#"{"so_sndbuf": 212992, "so_rcvbuf": 131072, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0, "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0}"#;

    #[test]
    fn pretty_sockets_addresses_names_and_flags() {
        let inet = format!(
            r#"{{"magic": "FILES", "entries": [{{"type": "INETSK", "id": 5, "isk": {{"id": 5, "ino": 77,
            "family": "INET6", "type": "STREAM", "proto": "TCP", "state": "LISTEN", "src_port": 8080,
            "dst_port": 0, "flags": "0x802", "backlog": 128, "src_addr": ["fe80::1"], "dst_addr": ["::"],
            "fown": {FOWN}, "opts": {OPTS}}}}},
            {{"type": "INETSK", "id": 6, "isk": {{"id": 6, "ino": 78, "family": "INET", "type": "DGRAM",
            "proto": "UDP", "state": "CLOSE", "src_port": 53, "dst_port": 0, "flags": "0x0", "backlog": 0,
            "src_addr": ["127.0.0.1"], "dst_addr": ["0.0.0.0"], "fown": {FOWN}, "opts": {OPTS}}}}},
            {{"type": "UNIXSK", "id": 7, "usk": {{"id": 7, "ino": 79, "type": "SEQPACKET", "state": "LISTEN",
            "flags": "0x800", "uflags": "0x0", "backlog": 5, "peer": 0, "fown": {FOWN}, "opts": {OPTS},
            "name": "=00ferry-abstract"}}}},
            {{"type": "REG", "id": 8, "reg": {{"id": 8, "flags": "O_WRONLY | O_APPEND | 0x40000000",
            "pos": 3, "fown": {FOWN}, "name": "/tmp/x"}}}}]}}"#
        );
        let out = round_trip(&inet, true);
        // The plain form of the same image keeps numbers.
        let img = json_to_image("t.json", &out).unwrap();
        let plain = image_to_json(&img, false).to_value();
        assert_eq!(plain["entries"][0]["isk"]["family"], 10);
        assert_eq!(
            plain["entries"][0]["isk"]["src_addr"],
            serde_json::json!([0x0000_80fe_u32, 0, 0, 0x0100_0000])
        );
        assert_eq!(
            plain["entries"][1]["isk"]["src_addr"],
            serde_json::json!([0x0100_007f_u32])
        );
        assert_eq!(plain["entries"][2]["usk"]["name"], "=00ferry-abstract");
        assert_eq!(plain["entries"][3]["reg"]["flags"], 0o2001 | 0x4000_0000);
        round_trip(&serde_json::to_string(&plain).unwrap(), false);
    }

    #[test]
    fn pretty_devices_hex_inheritance_and_errors() {
        let ghost = r#"{"magic": "GHOST_FILE", "entries": [{"uid": 0, "gid": 0, "mode": 33188, "dev": "0:38",
            "ino": 12, "rdev": "136:3", "extra": "aGVsbG8=\n"}]}"#;
        let out = round_trip(ghost, true);
        assert_eq!(out["entries"][0]["extra"], "aGVsbG8=\n");
        let e = json_to_image(
            "t.json",
            &serde_json::json!({"magic": "CORE", "entries": [{"mtype": "VAX"}]}),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "t.json: entries[0].mtype: not a value of enum march: \"VAX\""
        );
        let e = json_to_image(
            "t.json",
            &serde_json::json!({"magic": "PSTREE", "entries": [{"pid": -1}]}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("entries[0].pid: -1 is out of range"), "{e}");
        let e = json_to_image(
            "t.json",
            &serde_json::json!({"magic": "NOPE", "entries": []}),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "t.json: magic: unknown image type \"NOPE\"");
    }
}
