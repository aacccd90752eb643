//! Wire bytes to JSON: the fields of a message are read by number and written in the
//! order of its descriptor, in a [`Style`].

use super::{PROTOJSON, Pool, Style, json_name, pool};
use base64::Engine;
use prost::Message;
use prost_types::FieldDescriptorProto;
use prost_types::field_descriptor_proto::{Label, Type};
use serde_json::{Map, Value};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

fn read_varint(b: &mut &[u8]) -> Result<u64, String> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&byte, rest) = b
            .split_first()
            .ok_or_else(|| "truncated varint".to_string())?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err("truncated field".into());
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

/// The fields of one message's wire bytes, by number, in the order they came.
fn fields(mut b: &[u8]) -> Result<HashMap<u32, Vec<Raw<'_>>>, String> {
    let mut out: HashMap<u32, Vec<Raw>> = HashMap::new();
    while !b.is_empty() {
        let key = read_varint(&mut b)?;
        let number = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        let raw = match key & 7 {
            0 => Raw::Varint(read_varint(&mut b)?),
            1 => {
                let s = take(&mut b, 8)?;
                Raw::Fixed64(u64::from_le_bytes(s.try_into().map_err(|_| "fixed64")?))
            }
            2 => {
                let n = usize::try_from(read_varint(&mut b)?).map_err(|_| "length")?;
                Raw::Bytes(take(&mut b, n)?)
            }
            5 => {
                let s = take(&mut b, 4)?;
                Raw::Fixed32(u32::from_le_bytes(s.try_into().map_err(|_| "fixed32")?))
            }
            w => return Err(format!("field {number}: unsupported wire type {w}")),
        };
        out.entry(number).or_default().push(raw);
    }
    Ok(out)
}

/// Whether a scalar of this type can come packed (several in one length-delimited field).
fn packable(t: Type) -> bool {
    !matches!(t, Type::String | Type::Bytes | Type::Message | Type::Group)
}

/// Splits a packed field into its elements.
fn unpack(t: Type, mut b: &[u8]) -> Result<Vec<Raw<'_>>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        out.push(match t {
            Type::Double | Type::Fixed64 | Type::Sfixed64 => {
                let s = take(&mut b, 8)?;
                Raw::Fixed64(u64::from_le_bytes(s.try_into().map_err(|_| "fixed64")?))
            }
            Type::Float | Type::Fixed32 | Type::Sfixed32 => {
                let s = take(&mut b, 4)?;
                Raw::Fixed32(u32::from_le_bytes(s.try_into().map_err(|_| "fixed32")?))
            }
            _ => Raw::Varint(read_varint(&mut b)?),
        });
    }
    Ok(out)
}

fn float_json(v: f64) -> Value {
    if v.is_nan() {
        Value::String("NaN".into())
    } else if v.is_infinite() {
        Value::String(if v > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
    }
}

fn int64_json(v: i64, style: Style) -> Value {
    if style.int64_strings {
        Value::String(v.to_string())
    } else {
        Value::from(v)
    }
}

fn uint64_json(v: u64, style: Style) -> Value {
    if style.int64_strings {
        Value::String(v.to_string())
    } else {
        Value::from(v)
    }
}

fn mismatch(f: &FieldDescriptorProto) -> String {
    format!("field {}: wire type does not match its type", f.name())
}

/// One value of field `f` from its raw wire form.
fn scalar(pool: &Pool, f: &FieldDescriptorProto, raw: Raw, style: Style) -> Result<Value, String> {
    let t = f.r#type();
    Ok(match (t, raw) {
        (Type::Double, Raw::Fixed64(v)) => float_json(f64::from_bits(v)),
        (Type::Float, Raw::Fixed32(v)) => float_json(f64::from(f32::from_bits(v))),
        (Type::Int64, Raw::Varint(v)) => int64_json(v as i64, style),
        (Type::Sint64, Raw::Varint(v)) => int64_json(((v >> 1) as i64) ^ -((v & 1) as i64), style),
        (Type::Sfixed64, Raw::Fixed64(v)) => int64_json(v as i64, style),
        (Type::Uint64, Raw::Varint(v)) | (Type::Fixed64, Raw::Fixed64(v)) => uint64_json(v, style),
        (Type::Int32, Raw::Varint(v)) => Value::from(v as i32),
        (Type::Sint32, Raw::Varint(v)) => {
            let v = v as u32;
            Value::from(((v >> 1) as i32) ^ -((v & 1) as i32))
        }
        (Type::Sfixed32, Raw::Fixed32(v)) => Value::from(v as i32),
        (Type::Uint32, Raw::Varint(v)) => Value::from(v as u32),
        (Type::Fixed32, Raw::Fixed32(v)) => Value::from(v),
        (Type::Bool, Raw::Varint(v)) => Value::Bool(v != 0),
        (Type::String, Raw::Bytes(b)) => Value::String(
            String::from_utf8(b.to_vec())
                .map_err(|_| format!("field {}: string is not UTF-8", f.name()))?,
        ),
        (Type::Bytes, Raw::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Type::Enum, Raw::Varint(v)) => {
            let n = v as i32;
            let name = if style.enum_names {
                pool.enumeration(f.type_name())?
                    .value
                    .iter()
                    .find(|e| e.number() == n)
                    .map(|e| e.name().to_string())
            } else {
                None
            };
            name.map_or(Value::from(n), Value::String)
        }
        (Type::Message, Raw::Bytes(b)) => message_json(pool, f.type_name(), b, style)?,
        _ => return Err(mismatch(f)),
    })
}

/// The value a scalar field has when it is absent.
fn default_json(pool: &Pool, f: &FieldDescriptorProto, style: Style) -> Result<Value, String> {
    Ok(match f.r#type() {
        Type::String | Type::Bytes => Value::String(String::new()),
        Type::Bool => Value::Bool(false),
        Type::Int64 | Type::Sint64 | Type::Sfixed64 => int64_json(0, style),
        Type::Uint64 | Type::Fixed64 => uint64_json(0, style),
        Type::Enum => {
            let zero = if style.enum_names {
                pool.enumeration(f.type_name())?
                    .value
                    .iter()
                    .find(|e| e.number() == 0)
                    .map(|e| e.name().to_string())
            } else {
                None
            };
            zero.map_or(Value::from(0), Value::String)
        }
        _ => Value::from(0),
    })
}

fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(_) => false,
    }
}

/// The JSON of message `name` from its wire bytes.
fn message_json(pool: &Pool, name: &str, bytes: &[u8], style: Style) -> Result<Value, String> {
    let desc = pool.message(name)?;
    let present = fields(bytes)?;
    let mut out = Map::new();
    for f in &desc.field {
        let key = if style.proto_names {
            f.name().to_string()
        } else {
            json_name(f)
        };
        let raws = present
            .get(&(f.number() as u32))
            .map(Vec::as_slice)
            .unwrap_or_default();
        if let Some(entry) = pool.map_entry(f) {
            let (Some(kf), Some(vf)) = (
                entry.field.iter().find(|x| x.number() == 1),
                entry.field.iter().find(|x| x.number() == 2),
            ) else {
                return Err(format!("map entry of {} lacks key or value", f.name()));
            };
            let mut m = Map::new();
            for raw in raws {
                let Raw::Bytes(b) = raw else {
                    return Err(mismatch(f));
                };
                let e = fields(b)?;
                let k = match e.get(&1).and_then(|v| v.last()) {
                    Some(r) => scalar(pool, kf, *r, PROTOJSON)?,
                    None => default_json(pool, kf, PROTOJSON)?,
                };
                let k = match k {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let v = match e.get(&2).and_then(|v| v.last()) {
                    Some(r) => scalar(pool, vf, *r, style)?,
                    None if vf.r#type() == Type::Message => {
                        message_json(pool, vf.type_name(), &[], style)?
                    }
                    None => default_json(pool, vf, style)?,
                };
                m.insert(k, v);
            }
            if !m.is_empty() || style.emit_defaults {
                out.insert(key, Value::Object(m));
            }
        } else if f.label() == Label::Repeated {
            let mut list = Vec::new();
            for raw in raws {
                match raw {
                    Raw::Bytes(b) if packable(f.r#type()) => {
                        for r in unpack(f.r#type(), b)? {
                            list.push(scalar(pool, f, r, style)?);
                        }
                    }
                    r => list.push(scalar(pool, f, *r, style)?),
                }
            }
            if !list.is_empty() || style.emit_defaults {
                out.insert(key, Value::Array(list));
            }
        } else if let Some(raw) = raws.last() {
            let v = scalar(pool, f, *raw, style)?;
            if style.emit_defaults || f.r#type() == Type::Message || !is_default(&v) {
                out.insert(key, v);
            }
        } else if style.emit_defaults && f.r#type() != Type::Message {
            out.insert(key, default_json(pool, f, style)?);
        }
    }
    Ok(Value::Object(out))
}

/// `msg`, a message of type `type_name` (`runtime.v1.ContainerStatus`), as JSON.
pub fn to_json<M: Message>(msg: &M, type_name: &str, style: Style) -> Result<Value, String> {
    message_json(pool()?, type_name, &msg.encode_to_vec(), style)
}
