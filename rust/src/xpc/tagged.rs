//! XPC values the message model has no variant for (uint64, uuid, double,
//! null, array), carried losslessly as a tagged nested dictionary, and
//! [`object_tag`], a handle to an XPC object kept as it is in this process
//! (how the broker hands a vmnet serialization to the macOS transport
//! without rebuilding it).
//!
//! Portable so it is tested on every OS; `xpc/apple/object.rs` converts with
//! it. Pure functions.

use super::{Dict, Error, Value};

/// Key of a tagged value: a dictionary holding exactly this key (with the
/// XPC type name) and [`TAG_VALUE_KEY`] stands for one XPC value of a kind
/// `Value` lacks. `$` keeps it apart from vmnet's and the protocols' keys.
pub const TAG_TYPE_KEY: &str = "$xpc_type";
pub const TAG_VALUE_KEY: &str = "$value";

/// An XPC value without a `Value` variant.
#[derive(Debug)]
pub enum Tagged {
    /// `uint64`; carried as the same 64 bits in an `Int`.
    Uint64(u64),
    /// `uuid`; 16 bytes of data.
    Uuid([u8; 16]),
    /// `double`; the IEEE-754 bits in an `Int`.
    Double(f64),
    /// `null`.
    Null,
    /// `array`; items under keys "0", "1", ...
    Array(Vec<Value>),
    /// An XPC object kept as it is in this process (`xpc::apple::object`
    /// holds it), named by a process-local handle: how the broker hands a
    /// vmnet serialization to the transport without rebuilding it.
    Object(u64),
}

/// A tagged value as a `Value::Dict`.
pub fn tag(value: Tagged) -> Value {
    let (name, inner) = match value {
        Tagged::Uint64(v) => ("uint64", Some(Value::Int(v as i64))),
        Tagged::Uuid(bytes) => ("uuid", Some(Value::Data(bytes.to_vec()))),
        Tagged::Double(v) => ("double", Some(Value::Int(v.to_bits() as i64))),
        Tagged::Null => ("null", None),
        Tagged::Object(handle) => ("object", Some(Value::Int(handle as i64))),
        Tagged::Array(items) => {
            let mut d = Dict::new();
            for (i, item) in items.into_iter().enumerate() {
                d.insert(i.to_string(), item);
            }
            ("array", Some(Value::Dict(d)))
        }
    };
    let mut d = Dict::new().with(TAG_TYPE_KEY, Value::String(name.into()));
    if let Some(inner) = inner {
        d.insert(TAG_VALUE_KEY, inner);
    }
    Value::Dict(d)
}

/// The tag standing for the kept XPC object `handle`, as the dictionary a
/// `Network::serialization` returns.
pub fn object_tag(handle: u64) -> Dict {
    match tag(Tagged::Object(handle)) {
        Value::Dict(d) => d,
        _ => Dict::new(),
    }
}

/// If `dict` is a tagged value, takes it apart; `Ok(Err(dict))` hands an
/// ordinary dictionary back. Array items come in index order, as `Value`s.
pub fn untag(mut dict: Dict) -> Result<Result<Tagged, Dict>, Error> {
    let Some(name) = dict.get_str(TAG_TYPE_KEY).map(str::to_owned) else {
        return Ok(Err(dict));
    };
    let extra = dict.len() - 1 - usize::from(dict.contains_key(TAG_VALUE_KEY));
    if extra != 0 {
        return Err(bad(format!("a {name} tag carries {extra} unexpected keys")));
    }
    let value = dict.remove(TAG_VALUE_KEY);
    Ok(Ok(match (name.as_str(), value) {
        ("uint64", Some(Value::Int(v))) => Tagged::Uint64(v as u64),
        ("double", Some(Value::Int(v))) => Tagged::Double(f64::from_bits(v as u64)),
        ("uuid", Some(Value::Data(bytes))) => Tagged::Uuid(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| bad(format!("a uuid tag holds {} bytes, not 16", bytes.len())))?,
        ),
        ("null", None) => Tagged::Null,
        ("object", Some(Value::Int(handle))) => Tagged::Object(handle as u64),
        ("array", Some(Value::Dict(mut items))) => {
            let n = items.len();
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(
                    items
                        .remove(&i.to_string())
                        .ok_or_else(|| bad(format!("an array tag of {n} items lacks item {i}")))?,
                );
            }
            Tagged::Array(out)
        }
        (name, value) => {
            return Err(bad(format!("unknown tag {name:?} or wrong payload {:?}", value.map(|v| kind_of(&v)))))
        }
    }))
}

/// A tag that cannot be taken apart.
fn bad(problem: String) -> Error {
    Error::Malformed(format!("tagged XPC value: {problem}"))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Int(_) => "int",
        Value::Bool(_) => "bool",
        Value::Data(_) => "data",
        Value::Dict(_) => "dict",
        Value::Fd(_) => "fd",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let originals = vec![
            Tagged::Uint64(u64::MAX),
            Tagged::Uuid([7; 16]),
            Tagged::Double(-1.5),
            Tagged::Null,
            Tagged::Object(u64::MAX - 1),
            Tagged::Object(7),
            Tagged::Array(vec![Value::Int(1), Value::String("x".into()), tag(Tagged::Uint64(3))]),
        ];
        for original in originals {
            let repr = format!("{original:?}");
            let Value::Dict(d) = tag(original) else { panic!("tag is not a dict") };
            let back = untag(d).unwrap().unwrap();
            match back {
                Tagged::Array(items) => {
                    assert_eq!(items.len(), 3);
                    assert!(matches!(items[0], Value::Int(1)));
                    let Value::Dict(inner) = &items[2] else { panic!("nested tag lost") };
                    assert!(matches!(untag(inner.try_clone().unwrap()).unwrap().unwrap(), Tagged::Uint64(3)));
                }
                other => assert_eq!(format!("{other:?}"), repr),
            }
        }
    }

    #[test]
    fn an_object_tag_names_its_handle() {
        let d = object_tag(42);
        assert_eq!(d.get_str(TAG_TYPE_KEY), Some("object"));
        assert!(matches!(untag(d).unwrap().unwrap(), Tagged::Object(42)));
    }

    #[test]
    fn plain_dicts_are_not_tags_and_bad_tags_are_errors() {
        let plain = Dict::new().with("networkSerialization", Value::Data(vec![1, 2]));
        assert!(untag(plain).unwrap().is_err());
        let bad =
            Dict::new().with(TAG_TYPE_KEY, Value::String("uuid".into())).with(TAG_VALUE_KEY, Value::Data(vec![1]));
        assert!(untag(bad).unwrap_err().to_string().contains("not 16"));
        let bad = Dict::new().with(TAG_TYPE_KEY, Value::String("mach_send".into()));
        assert!(untag(bad).unwrap_err().to_string().contains("unknown tag"));
        let bad = Dict::new().with(TAG_TYPE_KEY, Value::String("null".into())).with("other", Value::Bool(true));
        assert!(untag(bad).unwrap_err().to_string().contains("unexpected keys"));
        let items = Dict::new().with("0", Value::Int(1)).with("2", Value::Int(2));
        let bad = Dict::new().with(TAG_TYPE_KEY, Value::String("array".into())).with(TAG_VALUE_KEY, Value::Dict(items));
        assert!(untag(bad).unwrap_err().to_string().contains("lacks item 1"));
    }
}
