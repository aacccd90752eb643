//! JSON to wire bytes: every key must be a field of the message (by proto or JSON name),
//! every value of the field's type; errors say where (`linux.security_context.pid`).

use super::{Pool, json_name, pool, short};
use base64::Engine;
use prost::Message;
use prost_types::FieldDescriptorProto;
use prost_types::field_descriptor_proto::{Label, Type};
use serde_json::Value;

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, number: i32, wire: u8) {
    put_varint(buf, ((number as u64) << 3) | u64::from(wire));
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn at(path: &str) -> String {
    if path.is_empty() {
        "the top level".into()
    } else {
        format!("\"{path}\"")
    }
}

/// An integer from a JSON number (integral) or a decimal string.
fn integer(v: &Value, path: &str) -> Result<i128, String> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Ok(i128::from(u))
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 1e19 => Ok(f as i128),
                    _ => Err(format!("{}: {n} is not an integer", at(path))),
                }
            }
        }
        Value::String(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| format!("{}: {s:?} is not an integer", at(path))),
        other => Err(format!(
            "{}: expected an integer, got {}",
            at(path),
            kind(other)
        )),
    }
}

fn ranged<T: TryFrom<i128>>(v: i128, path: &str, what: &str) -> Result<T, String> {
    T::try_from(v).map_err(|_| format!("{}: {v} is out of range for {what}", at(path)))
}

fn float(v: &Value, path: &str) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("{}: {n} is not a number", at(path))),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            s => s
                .parse()
                .map_err(|_| format!("{}: {s:?} is not a number", at(path))),
        },
        other => Err(format!(
            "{}: expected a number, got {}",
            at(path),
            kind(other)
        )),
    }
}

/// Writes one value of field `f` (with its key) from JSON.
fn put_value(
    pool: &Pool,
    f: &FieldDescriptorProto,
    v: &Value,
    path: &str,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    let n = f.number();
    match f.r#type() {
        Type::Message => {
            let mut sub = Vec::new();
            put_message(pool, f.type_name(), v, path, &mut sub)?;
            put_key(buf, n, 2);
            put_varint(buf, sub.len() as u64);
            buf.extend_from_slice(&sub);
        }
        Type::String => {
            let s = v
                .as_str()
                .ok_or_else(|| format!("{}: expected a string, got {}", at(path), kind(v)))?;
            put_key(buf, n, 2);
            put_varint(buf, s.len() as u64);
            buf.extend_from_slice(s.as_bytes());
        }
        Type::Bytes => {
            let s = v.as_str().ok_or_else(|| {
                format!("{}: expected a base64 string, got {}", at(path), kind(v))
            })?;
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("{}: not base64: {e}", at(path)))?;
            put_key(buf, n, 2);
            put_varint(buf, b.len() as u64);
            buf.extend_from_slice(&b);
        }
        Type::Bool => {
            let b = v
                .as_bool()
                .ok_or_else(|| format!("{}: expected true or false, got {}", at(path), kind(v)))?;
            put_key(buf, n, 0);
            put_varint(buf, u64::from(b));
        }
        Type::Enum => {
            let e = pool.enumeration(f.type_name())?;
            let number = match v {
                Value::String(s) => e
                    .value
                    .iter()
                    .find(|x| x.name() == s)
                    .map(|x| x.number())
                    .ok_or_else(|| {
                        let names: Vec<&str> = e.value.iter().map(|x| x.name()).collect();
                        format!(
                            "{}: {s:?} is not a {} (one of {})",
                            at(path),
                            e.name(),
                            names.join(", ")
                        )
                    })?,
                other => ranged::<i32>(integer(other, path)?, path, e.name())?,
            };
            put_key(buf, n, 0);
            put_varint(buf, number as i64 as u64);
        }
        Type::Int32 => {
            let i: i32 = ranged(integer(v, path)?, path, "int32")?;
            put_key(buf, n, 0);
            put_varint(buf, i as i64 as u64);
        }
        Type::Int64 => {
            let i: i64 = ranged(integer(v, path)?, path, "int64")?;
            put_key(buf, n, 0);
            put_varint(buf, i as u64);
        }
        Type::Uint32 => {
            let i: u32 = ranged(integer(v, path)?, path, "uint32")?;
            put_key(buf, n, 0);
            put_varint(buf, u64::from(i));
        }
        Type::Uint64 => {
            let i: u64 = ranged(integer(v, path)?, path, "uint64")?;
            put_key(buf, n, 0);
            put_varint(buf, i);
        }
        Type::Sint32 => {
            let i: i32 = ranged(integer(v, path)?, path, "sint32")?;
            put_key(buf, n, 0);
            put_varint(buf, u64::from(((i << 1) ^ (i >> 31)) as u32));
        }
        Type::Sint64 => {
            let i: i64 = ranged(integer(v, path)?, path, "sint64")?;
            put_key(buf, n, 0);
            put_varint(buf, ((i << 1) ^ (i >> 63)) as u64);
        }
        Type::Fixed32 => {
            let i: u32 = ranged(integer(v, path)?, path, "fixed32")?;
            put_key(buf, n, 5);
            buf.extend_from_slice(&i.to_le_bytes());
        }
        Type::Sfixed32 => {
            let i: i32 = ranged(integer(v, path)?, path, "sfixed32")?;
            put_key(buf, n, 5);
            buf.extend_from_slice(&i.to_le_bytes());
        }
        Type::Fixed64 => {
            let i: u64 = ranged(integer(v, path)?, path, "fixed64")?;
            put_key(buf, n, 1);
            buf.extend_from_slice(&i.to_le_bytes());
        }
        Type::Sfixed64 => {
            let i: i64 = ranged(integer(v, path)?, path, "sfixed64")?;
            put_key(buf, n, 1);
            buf.extend_from_slice(&i.to_le_bytes());
        }
        Type::Float => {
            put_key(buf, n, 5);
            buf.extend_from_slice(&(float(v, path)? as f32).to_le_bytes());
        }
        Type::Double => {
            put_key(buf, n, 1);
            buf.extend_from_slice(&float(v, path)?.to_le_bytes());
        }
        Type::Group => return Err(format!("{}: groups are not supported", at(path))),
    }
    Ok(())
}

/// Writes the fields of message `name` from a JSON object.
fn put_message(
    pool: &Pool,
    name: &str,
    v: &Value,
    path: &str,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    let desc = pool.message(name)?;
    let obj = v.as_object().ok_or_else(|| {
        format!(
            "{}: expected an object ({}), got {}",
            at(path),
            short(name),
            kind(v)
        )
    })?;
    for (k, val) in obj {
        let child = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let Some(f) = desc
            .field
            .iter()
            .find(|f| f.name() == k || json_name(f) == *k)
        else {
            let known: Vec<&str> = desc.field.iter().map(|f| f.name()).collect();
            return Err(format!(
                "unknown field \"{k}\" in {} ({}; known fields: {})",
                at(path),
                short(name),
                known.join(", ")
            ));
        };
        if val.is_null() {
            continue;
        }
        if let Some(entry) = pool.map_entry(f) {
            let (Some(kf), Some(vf)) = (
                entry.field.iter().find(|x| x.number() == 1),
                entry.field.iter().find(|x| x.number() == 2),
            ) else {
                return Err(format!("map entry of {} lacks key or value", f.name()));
            };
            let m = val.as_object().ok_or_else(|| {
                format!(
                    "{}: expected an object (a map), got {}",
                    at(&child),
                    kind(val)
                )
            })?;
            for (mk, mv) in m {
                let entry_path = format!("{child}.{mk}");
                let mut e = Vec::new();
                let key = match kf.r#type() {
                    Type::String => Value::String(mk.clone()),
                    Type::Bool => Value::Bool(mk == "true"),
                    _ => Value::String(mk.clone()),
                };
                put_value(pool, kf, &key, &entry_path, &mut e)?;
                put_value(pool, vf, mv, &entry_path, &mut e)?;
                put_key(buf, f.number(), 2);
                put_varint(buf, e.len() as u64);
                buf.extend_from_slice(&e);
            }
        } else if f.label() == Label::Repeated {
            let list = val
                .as_array()
                .ok_or_else(|| format!("{}: expected a list, got {}", at(&child), kind(val)))?;
            for (i, item) in list.iter().enumerate() {
                put_value(pool, f, item, &format!("{child}[{i}]"), buf)?;
            }
        } else {
            put_value(pool, f, val, &child, buf)?;
        }
    }
    Ok(())
}

/// A message of type `type_name` from a JSON object (see the module docs for what is taken).
pub fn from_json<M: Message + Default>(v: &Value, type_name: &str) -> Result<M, String> {
    let mut buf = Vec::new();
    put_message(pool()?, type_name, v, "", &mut buf)?;
    M::decode(buf.as_slice()).map_err(|e| format!("{}: {e}", short(type_name)))
}
