//! The Linux wire encoding of a [`Dict`] (docs/protocol.md, "Encoding").
//!
//! A request is one SOCK_SEQPACKET record: a 8-byte header (magic `VMRS`,
//! version, flags) and one dictionary as tag-length-value entries; the fds
//! travel beside it in one SCM_RIGHTS array and an fd value is an index into
//! that array. A reply may be larger than one record (a `status` of a broker
//! with hundreds of ports): [`split_reply`] cuts its encoding into records
//! of at most [`MAX_RECORD_BYTES`], each with the header and the
//! [`FLAG_MORE`] flag on all but the last, and [`Joiner`] puts them back
//! together. Requests and replies have their own [`Limits`]. Pure functions,
//! run on whichever thread sends or receives.
//!
//! Invariants of [`decode`]: it never panics, never allocates more than the
//! input's size allows, rejects trailing bytes, duplicate keys, unknown tags,
//! keys out of order, non-UTF-8 strings and keys, and fd indexes that are
//! out of range or out of order; every fd in the array is either moved into the returned message or
//! closed when decoding fails (none leak). The encoding is canonical: what
//! decodes re-encodes to the same bytes.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::xpc::{Dict, Error, Value};

/// `VMRS`: the first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"VMRS";
/// The encoding version this build writes and reads.
pub const VERSION: u16 = 1;
/// Bytes before the top-level dictionary: magic, version, flags.
pub const HEADER_BYTES: usize = 8;

/// Largest record (header included), and so the largest request. Far above
/// any real request (a Lima configuration is < 1 KiB) and below the default
/// unix socket send buffer (208 KiB), so one record always fits.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Largest request (header included): one record.
pub const MAX_MESSAGE_BYTES: usize = MAX_RECORD_BYTES;
/// Largest reply (one header plus the dictionary), sent in records of at
/// most [`MAX_RECORD_BYTES`]. A `status` costs about 1.2 KiB per port, so
/// this holds some ten thousand ports.
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// Deepest nesting of dictionaries; the top level is depth 1.
pub const MAX_DEPTH: usize = 8;
/// Most keys in one dictionary of a request.
pub const MAX_KEYS: usize = 256;
/// Most keys in one dictionary of a reply (all a count of 16 bits holds: a
/// `status` has one key per lease).
pub const MAX_REPLY_KEYS: usize = u16::MAX as usize;
/// Header flag: the message goes on in the next record (replies only).
pub const FLAG_MORE: u16 = 1;

/// How large a message may be, by direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoding, one header included.
    pub bytes: usize,
    /// Most keys in one dictionary.
    pub keys: usize,
}

impl Limits {
    /// A request: one record.
    pub const REQUEST: Limits = Limits { bytes: MAX_MESSAGE_BYTES, keys: MAX_KEYS };
    /// A reply: records joined by [`Joiner`].
    pub const REPLY: Limits = Limits { bytes: MAX_REPLY_BYTES, keys: MAX_REPLY_KEYS };
}
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 255;
/// Most fds one message carries.
pub const MAX_FDS: usize = 8;

const TAG_STRING: u8 = 1;
const TAG_INT: u8 = 2;
const TAG_BOOL: u8 = 3;
const TAG_DATA: u8 = 4;
const TAG_DICT: u8 = 5;
const TAG_FD: u8 = 6;

/// Encodes `dict` as a request (one record, [`Limits::REQUEST`]); returns
/// the bytes and the fds to send in SCM_RIGHTS, in index order (borrowed
/// from the message, which must outlive the send).
pub fn encode(dict: &Dict) -> Result<(Vec<u8>, Vec<RawFd>), Error> {
    encode_with(dict, &Limits::REQUEST)
}

/// Encodes `dict` within `limits` as one message (flags 0); a reply then
/// goes out in the records [`split_reply`] makes of it.
pub fn encode_with(dict: &Dict, limits: &Limits) -> Result<(Vec<u8>, Vec<RawFd>), Error> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    let mut fds = Vec::new();
    encode_dict(dict, 1, limits, &mut out, &mut fds)?;
    if out.len() > limits.bytes {
        return Err(Error::TooLarge { size: out.len(), limit: limits.bytes });
    }
    Ok((out, fds))
}

/// Cuts one encoded message (from [`encode_with`]) into records of at most
/// [`MAX_RECORD_BYTES`]: each starts with the header, all but the last with
/// [`FLAG_MORE`] set. A message that fits one record is returned as it is.
/// The fds go with the first record.
pub fn split_reply(message: &[u8]) -> Vec<Vec<u8>> {
    let body = &message[HEADER_BYTES.min(message.len())..];
    let chunk = MAX_RECORD_BYTES - HEADER_BYTES;
    let count = body.len().div_ceil(chunk).max(1);
    (0..count)
        .map(|i| {
            let part = &body[i * chunk..((i + 1) * chunk).min(body.len())];
            let flags = if i + 1 < count { FLAG_MORE } else { 0 };
            let mut record = Vec::with_capacity(HEADER_BYTES + part.len());
            record.extend_from_slice(&MAGIC);
            record.extend_from_slice(&VERSION.to_be_bytes());
            record.extend_from_slice(&flags.to_be_bytes());
            record.extend_from_slice(part);
            record
        })
        .collect()
}

/// Puts a reply's records back together: [`Joiner::push`] each record as it
/// arrives until it says the message is whole, then [`Joiner::message`] is
/// the message as one encoding (flags 0) for [`decode_with`] and
/// [`Limits::REPLY`].
#[derive(Default)]
pub struct Joiner {
    message: Vec<u8>,
}

impl Joiner {
    /// Takes one record; `Ok(true)` once the message is complete. Refuses a
    /// record without the header and a message beyond [`MAX_REPLY_BYTES`].
    pub fn push(&mut self, record: &[u8]) -> Result<bool, Error> {
        let flags = check_header(record)?;
        if flags & !FLAG_MORE != 0 {
            return Err(Error::Malformed(format!("unknown flags {flags:#06x}")));
        }
        if self.message.is_empty() {
            self.message.extend_from_slice(&MAGIC);
            self.message.extend_from_slice(&VERSION.to_be_bytes());
            self.message.extend_from_slice(&0u16.to_be_bytes());
        }
        let body = &record[HEADER_BYTES..];
        if self.message.len() + body.len() > MAX_REPLY_BYTES {
            return Err(Error::TooLarge { size: self.message.len() + body.len(), limit: MAX_REPLY_BYTES });
        }
        self.message.extend_from_slice(body);
        Ok(flags & FLAG_MORE == 0)
    }

    /// The message so far (whole once [`Joiner::push`] returned true).
    pub fn message(&self) -> &[u8] {
        &self.message
    }
}

/// Checks magic and version of a record; returns its flags.
fn check_header(bytes: &[u8]) -> Result<u16, Error> {
    if bytes.len() < HEADER_BYTES {
        return Err(Error::Malformed(format!("truncated at byte 0: the header needs {HEADER_BYTES} bytes, {} left", bytes.len())));
    }
    if bytes[..4] != MAGIC {
        return Err(Error::Malformed(format!("bad magic {:02x?} (expected \"VMRS\"): not a vmnet-rs message", &bytes[..4])));
    }
    let version = u16::from_be_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(Error::Malformed(format!("encoding version {version} (this broker speaks {VERSION})")));
    }
    Ok(u16::from_be_bytes([bytes[6], bytes[7]]))
}

fn encode_dict(dict: &Dict, depth: usize, limits: &Limits, out: &mut Vec<u8>, fds: &mut Vec<RawFd>) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::Malformed(format!("dictionaries nested deeper than {MAX_DEPTH}")));
    }
    if dict.len() > limits.keys {
        return Err(Error::Malformed(format!("{} keys in one dictionary (limit {})", dict.len(), limits.keys)));
    }
    out.extend_from_slice(&(dict.len() as u16).to_be_bytes());
    for (key, value) in dict.iter() {
        if key.len() > MAX_KEY_BYTES {
            return Err(Error::Malformed(format!("key of {} bytes (limit {MAX_KEY_BYTES})", key.len())));
        }
        out.push(key.len() as u8);
        out.extend_from_slice(key.as_bytes());
        match value {
            Value::String(s) => {
                out.push(TAG_STRING);
                put_bytes(out, s.as_bytes(), limits)?;
            }
            Value::Int(i) => {
                out.push(TAG_INT);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::Bool(b) => {
                out.push(TAG_BOOL);
                out.push(u8::from(*b));
            }
            Value::Data(d) => {
                out.push(TAG_DATA);
                put_bytes(out, d, limits)?;
            }
            Value::Dict(d) => {
                out.push(TAG_DICT);
                encode_dict(d, depth + 1, limits, out, fds)?;
            }
            Value::Fd(fd) => {
                if fds.len() >= MAX_FDS {
                    return Err(Error::Malformed(format!("more than {MAX_FDS} fds in one message")));
                }
                out.push(TAG_FD);
                out.push(fds.len() as u8);
                fds.push(fd.as_raw_fd());
            }
        }
        if out.len() > limits.bytes {
            return Err(Error::TooLarge { size: out.len(), limit: limits.bytes });
        }
    }
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8], limits: &Limits) -> Result<(), Error> {
    if bytes.len() > limits.bytes {
        return Err(Error::TooLarge { size: bytes.len(), limit: limits.bytes });
    }
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Decodes one request (one record, [`Limits::REQUEST`]). `fds` are the
/// descriptors that arrived with it in SCM_RIGHTS; each must be referenced
/// exactly once.
pub fn decode(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<Dict, Error> {
    decode_with(bytes, fds, &Limits::REQUEST)
}

/// Decodes one message within `limits` (a reply: the message a [`Joiner`]
/// put together, with [`Limits::REPLY`]). Every fd is closed on error.
pub fn decode_with(bytes: &[u8], fds: Vec<OwnedFd>, limits: &Limits) -> Result<Dict, Error> {
    if bytes.len() > limits.bytes {
        return Err(Error::TooLarge { size: bytes.len(), limit: limits.bytes });
    }
    if fds.len() > MAX_FDS {
        return Err(Error::Malformed(format!("{} fds attached (limit {MAX_FDS})", fds.len())));
    }
    let mut reader = Reader { bytes, pos: 0, fds: fds.into_iter().map(Some).collect(), next_fd: 0, keys: limits.keys };
    let magic = reader.take(4, "magic")?;
    if magic != MAGIC {
        return Err(Error::Malformed(format!("bad magic {magic:02x?} (expected \"VMRS\"): not a vmnet-rs message")));
    }
    let version = reader.u16("version")?;
    if version != VERSION {
        return Err(Error::Malformed(format!("encoding version {version} (this broker speaks {VERSION})")));
    }
    let flags = reader.u16("flags")?;
    if flags == FLAG_MORE {
        return Err(Error::Malformed("flag MORE on a request: a request is one record".into()));
    }
    if flags != 0 {
        return Err(Error::Malformed(format!("unknown flags {flags:#06x}")));
    }
    let dict = reader.dict(1)?;
    if reader.pos != bytes.len() {
        return Err(Error::Malformed(format!("{} trailing bytes after the message", bytes.len() - reader.pos)));
    }
    if let Some(i) = reader.fds.iter().position(Option::is_some) {
        return Err(Error::Malformed(format!("fd {i} attached but not referenced")));
    }
    Ok(dict)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    fds: Vec<Option<OwnedFd>>,
    next_fd: usize,
    keys: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::Malformed(format!(
                "truncated at byte {}: {what} needs {n} bytes, {} left",
                self.pos,
                self.bytes.len() - self.pos
            ))),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, Error> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn dict(&mut self, depth: usize) -> Result<Dict, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::Malformed(format!("dictionaries nested deeper than {MAX_DEPTH}")));
        }
        let count = self.u16("key count")? as usize;
        if count > self.keys {
            return Err(Error::Malformed(format!("{count} keys in one dictionary (limit {})", self.keys)));
        }
        let mut dict = Dict::new();
        let mut last_key: Option<String> = None;
        for _ in 0..count {
            let key_len = self.u8("key length")? as usize;
            let key = self.take(key_len, "key")?;
            let key = std::str::from_utf8(key).map_err(|_| Error::Malformed(format!("key at byte {} is not UTF-8", self.pos - key_len)))?;
            // Keys are strictly ascending (byte order), so each dictionary
            // has exactly one encoding and duplicates cannot occur.
            if let Some(last) = &last_key {
                if last.as_str() >= key {
                    let what = if last == key { "duplicate key" } else { "keys out of order at" };
                    return Err(Error::Malformed(format!("{what} {key:?}")));
                }
            }
            last_key = Some(key.to_owned());
            let tag = self.u8("value tag")?;
            let value = match tag {
                TAG_STRING => {
                    let len = self.u32("string length")? as usize;
                    let s = self.take(len, "string")?;
                    Value::String(
                        String::from_utf8(s.to_vec()).map_err(|_| Error::Malformed(format!("value of {key:?} is not UTF-8")))?,
                    )
                }
                TAG_INT => {
                    let b = self.take(8, "int64")?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    Value::Int(i64::from_be_bytes(a))
                }
                TAG_BOOL => match self.u8("bool")? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    other => return Err(Error::Malformed(format!("bool {key:?} is {other}, not 0 or 1"))),
                },
                TAG_DATA => {
                    let len = self.u32("data length")? as usize;
                    Value::Data(self.take(len, "data")?.to_vec())
                }
                TAG_DICT => Value::Dict(self.dict(depth + 1)?),
                TAG_FD => {
                    // Fds are referenced in array order, each once.
                    let index = self.u8("fd index")? as usize;
                    if index != self.next_fd {
                        return Err(Error::Malformed(format!(
                            "fd index {index} where {} was expected (fds are referenced in order, each once)",
                            self.next_fd
                        )));
                    }
                    match self.fds.get_mut(index).and_then(Option::take) {
                        Some(fd) => {
                            self.next_fd += 1;
                            Value::Fd(fd)
                        }
                        None => {
                            return Err(Error::Malformed(format!("fd index {index} but {} fds attached", self.fds.len())))
                        }
                    }
                }
                other => return Err(Error::Malformed(format!("unknown value tag {other} for key {key:?}"))),
            };
            dict.insert(key, value);
        }
        Ok(dict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn sample(fd: Option<OwnedFd>) -> Dict {
        let mut inner = Dict::new();
        inner.insert("x", Value::Int(-7)).insert("nested", Value::Dict(Dict::new().with("b", Value::Bool(false))));
        let mut d = Dict::new()
            .with("command", Value::String("open".into()))
            .with("n", Value::Int(i64::MIN))
            .with("yes", Value::Bool(true))
            .with("blob", Value::Data(vec![0, 1, 2, 255]))
            .with("inner", Value::Dict(inner));
        if let Some(fd) = fd {
            d.insert("fd", Value::Fd(fd));
        }
        d
    }

    fn devnull() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    /// A pipe whose write end is duplicated `n` times: the read end sees EOF
    /// once every copy is closed, which checks for leaks without counting
    /// the process's fds (other tests run in parallel threads).
    fn tracked(n: usize) -> (OwnedFd, Vec<OwnedFd>) {
        let mut p = [0; 2];
        // SAFETY: p has room for the two fds pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }, 0);
        // SAFETY: pipe2 succeeded, so both fds are open and ours.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let copies = (0..n).map(|_| w.try_clone().unwrap()).collect();
        (r, copies)
    }

    fn all_closed(read_end: &OwnedFd) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: reads at most one byte into b.
        unsafe { libc::read(read_end.as_raw_fd(), b.as_mut_ptr().cast(), 1) == 0 }
    }

    fn same(a: &Dict, b: &Dict) -> bool {
        a.len() == b.len()
            && a.iter().all(|(k, v)| match (v, b.get(k)) {
                (Value::String(x), Some(Value::String(y))) => x == y,
                (Value::Int(x), Some(Value::Int(y))) => x == y,
                (Value::Bool(x), Some(Value::Bool(y))) => x == y,
                (Value::Data(x), Some(Value::Data(y))) => x == y,
                (Value::Dict(x), Some(Value::Dict(y))) => same(x, y),
                (Value::Fd(_), Some(Value::Fd(_))) => true,
                _ => false,
            })
    }

    #[test]
    fn round_trips_every_type() {
        let d = sample(Some(devnull()));
        let (bytes, fds) = encode(&d).unwrap();
        assert_eq!(&bytes[..4], b"VMRS");
        assert_eq!(fds.len(), 1);
        let dup = fds.iter().map(|&fd| {
            // SAFETY: fd is open (owned by `d`); dup gives a new owned fd.
            unsafe { OwnedFd::from_raw_fd(libc::dup(fd)) }
        });
        let back = decode(&bytes, dup.collect()).unwrap();
        assert!(same(&d, &back));
        assert_eq!(back.get_dict("inner").unwrap().get_int("x"), Some(-7));
    }

    #[test]
    fn encoding_is_deterministic() {
        assert_eq!(encode(&sample(None)).unwrap().0, encode(&sample(None)).unwrap().0);
    }

    #[test]
    fn rejects_trailing_bytes_and_truncation() {
        let (mut bytes, _) = encode(&sample(None)).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], Vec::new()).is_err(), "prefix of {cut} bytes decoded");
        }
        bytes.push(0);
        let err = decode(&bytes, Vec::new()).unwrap_err().to_string();
        assert!(err.contains("trailing"), "{err}");
    }

    #[test]
    fn rejects_bad_header() {
        let (bytes, _) = encode(&sample(None)).unwrap();
        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(decode(&b, Vec::new()).unwrap_err().to_string().contains("magic"));
        let mut b = bytes.clone();
        b[5] = 2;
        assert!(decode(&b, Vec::new()).unwrap_err().to_string().contains("version"));
        let mut b = bytes;
        b[7] = 2;
        assert!(decode(&b, Vec::new()).unwrap_err().to_string().contains("flags"));
        b[7] = 1;
        assert!(decode(&b, Vec::new()).unwrap_err().to_string().contains("a request is one record"));
    }

    #[test]
    fn rejects_depth_beyond_limit() {
        let mut d = Dict::new();
        for _ in 0..MAX_DEPTH {
            d = Dict::new().with("d", Value::Dict(d));
        }
        assert!(encode(&d).is_err());
        // Hand-build the same too-deep message to check the decoder too.
        let mut bytes = b"VMRS\0\x01\0\0".to_vec();
        for _ in 0..MAX_DEPTH {
            bytes.extend_from_slice(&[0, 1, 1, b'd', TAG_DICT]);
        }
        bytes.extend_from_slice(&[0, 0]);
        let err = decode(&bytes, Vec::new()).unwrap_err().to_string();
        assert!(err.contains("nested"), "{err}");
    }

    #[test]
    fn rejects_oversized_and_duplicate_keys() {
        let big = Dict::new().with("d", Value::Data(vec![0; MAX_MESSAGE_BYTES]));
        assert!(matches!(encode(&big), Err(Error::TooLarge { .. })));
        let mut bytes = b"VMRS\0\x01\0\0\0\x02".to_vec();
        for _ in 0..2 {
            bytes.extend_from_slice(&[1, b'k', TAG_BOOL, 1]);
        }
        assert!(decode(&bytes, Vec::new()).unwrap_err().to_string().contains("duplicate"));
    }

    /// A reply as large as a `status` with `ports` ports: one key per port
    /// in two dictionaries, about 1.2 KiB per port.
    fn big_reply(ports: usize) -> Dict {
        let mut leases = Dict::new();
        let mut adaptors = Dict::new();
        for i in 0..ports {
            leases.insert(i.to_string(), Value::Dict(Dict::new().with("network", Value::String("shared".into())).with("pad", Value::Data(vec![7; 600]))));
            adaptors.insert(i.to_string(), Value::Dict(Dict::new().with("packets", Value::Int(i as i64)).with("pad", Value::Data(vec![9; 600]))));
        }
        Dict::new().with("ok", Value::Bool(true)).with("leases", Value::Dict(leases)).with("adaptors", Value::Dict(adaptors))
    }

    #[test]
    fn a_reply_beyond_one_record_goes_in_several_and_joins_again() {
        let reply = big_reply(300);
        // As a request it is refused: too many keys in one dictionary.
        assert!(encode(&reply).is_err());
        let (message, fds) = encode_with(&reply, &Limits::REPLY).unwrap();
        assert!(fds.is_empty());
        assert!(message.len() > 3 * MAX_RECORD_BYTES, "{} bytes", message.len());
        let records = split_reply(&message);
        assert_eq!(records.len(), (message.len() - HEADER_BYTES).div_ceil(MAX_RECORD_BYTES - HEADER_BYTES));
        let mut joiner = Joiner::default();
        for (i, r) in records.iter().enumerate() {
            assert!(r.len() <= MAX_RECORD_BYTES);
            let last = i + 1 == records.len();
            assert_eq!(u16::from_be_bytes([r[6], r[7]]), if last { 0 } else { FLAG_MORE });
            assert_eq!(joiner.push(r).unwrap(), last);
        }
        assert_eq!(joiner.message(), &message[..]);
        let back = decode_with(joiner.message(), Vec::new(), &Limits::REPLY).unwrap();
        assert!(same(&reply, &back));
        assert_eq!(back.get_dict("leases").unwrap().len(), 300);
        // A reply that fits one record is that record, flags 0.
        let (small, _) = encode_with(&sample(None), &Limits::REPLY).unwrap();
        assert_eq!(split_reply(&small), vec![small.clone()]);
        // Neither the request decoder nor the request limits take the big one.
        assert!(matches!(decode(joiner.message(), Vec::new()), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn a_request_is_one_record_and_the_joiner_checks_each_header() {
        let (message, _) = encode_with(&big_reply(100), &Limits::REPLY).unwrap();
        let first = split_reply(&message).remove(0);
        let err = decode(&first, Vec::new()).unwrap_err().to_string();
        assert!(err.contains("a request is one record"), "{err}");
        let mut j = Joiner::default();
        assert!(j.push(b"VMR").unwrap_err().to_string().contains("header"));
        assert!(j.push(b"XMRS\0\x01\0\0").unwrap_err().to_string().contains("magic"));
        assert!(j.push(b"VMRS\0\x02\0\0").unwrap_err().to_string().contains("version"));
        assert!(j.push(b"VMRS\0\x01\0\x02").unwrap_err().to_string().contains("flags"));
        // Records that never end are cut off at the reply limit.
        let mut j = Joiner::default();
        let mut record = b"VMRS\0\x01\0\x01".to_vec();
        record.resize(MAX_RECORD_BYTES, 0);
        let err = (0..MAX_REPLY_BYTES / MAX_RECORD_BYTES + 2).find_map(|_| j.push(&record).err()).expect("the limit holds");
        assert!(matches!(err, Error::TooLarge { limit: MAX_REPLY_BYTES, .. }), "{err}");
    }

    #[test]
    fn fd_indexes_are_checked_and_nothing_leaks() {
        let cases: [(&[u8], usize, &str); 4] = [
            // Index out of range.
            (b"VMRS\0\x01\0\0\0\x01\x01f\x06\x00", 0, "0 fds attached"),
            // Index out of order.
            (b"VMRS\0\x01\0\0\0\x01\x01f\x06\x01", 2, "expected"),
            // Two references to one fd.
            (b"VMRS\0\x01\0\0\0\x02\x01a\x06\x00\x01b\x06\x00", 1, "expected"),
            // An fd nobody references.
            (b"VMRS\0\x01\0\0\0\x00", 2, "not referenced"),
        ];
        for (bytes, n, want) in cases {
            let (r, fds) = tracked(n);
            let err = decode(bytes, fds).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(all_closed(&r), "fd leaked after {err}");
        }
    }

    /// Seeded mutation test of the decoder (see docs/protocol.md, "Fuzzing"):
    /// flips, inserts, deletes and splices bytes of valid encodings and feeds
    /// every result to `decode` with a varying number of fds attached. It must
    /// return (never panic), and leak no fd. The count comes from
    /// `VMNET_RS_FUZZ_ITERATIONS` (default 20 000); the seed from
    /// `VMNET_RS_FUZZ_SEED` (default fixed, so a failure reproduces).
    #[test]
    fn decoder_survives_mutations() {
        let iterations: usize = std::env::var("VMNET_RS_FUZZ_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000);
        let mut rng: u64 = std::env::var("VMNET_RS_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_1234_abcd_ef01);
        let mut next = move || {
            // xorshift64*
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let seeds: Vec<Vec<u8>> = vec![
            encode(&sample(None)).unwrap().0,
            encode(&sample(Some(devnull()))).unwrap().0,
            encode(&Dict::new()).unwrap().0,
            encode(&Dict::new().with("Network", Value::String("shared".into())).with("Configuration", Value::Data(b"{}".to_vec())))
                .unwrap()
                .0,
            split_reply(&encode_with(&big_reply(60), &Limits::REPLY).unwrap().0).remove(1),
        ];
        let mut accepted = 0usize;
        for _ in 0..iterations {
            let mut b = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..1 + next() % 4 {
                let r = next();
                let pos = if b.is_empty() { 0 } else { (r >> 8) as usize % b.len() };
                match r % 6 {
                    0 if !b.is_empty() => b[pos] ^= 1 << ((r >> 40) % 8),
                    1 if !b.is_empty() => b[pos] = (r >> 32) as u8,
                    2 => b.insert(pos.min(b.len()), (r >> 32) as u8),
                    3 if !b.is_empty() => {
                        b.remove(pos);
                    }
                    4 => {
                        let other = &seeds[(r >> 16) as usize % seeds.len()];
                        let from = (r >> 24) as usize % other.len();
                        b.splice(pos.min(b.len())..pos.min(b.len()), other[from..].iter().copied().take(16));
                    }
                    _ if !b.is_empty() => {
                        let len = (r >> 48) as usize % b.len() + 1;
                        b.truncate(len);
                    }
                    _ => {}
                }
            }
            let (r, fds) = tracked((next() % 3) as usize);
            if let Ok(d) = decode(&b, fds) {
                accepted += 1;
                // What decodes must re-encode to the same bytes.
                assert_eq!(encode(&d).unwrap().0, b);
            }
            assert!(all_closed(&r), "the decoder leaked an fd on input {b:02x?}");
            // The same bytes as a reply record, through the joiner.
            let (r, fds) = tracked((next() % 3) as usize);
            let mut joiner = Joiner::default();
            match joiner.push(&b) {
                Ok(true) => {
                    if let Ok(d) = decode_with(joiner.message(), fds, &Limits::REPLY) {
                        assert_eq!(encode_with(&d, &Limits::REPLY).unwrap().0, joiner.message());
                    }
                }
                _ => drop(fds),
            }
            assert!(all_closed(&r), "the reply decoder leaked an fd on input {b:02x?}");
        }
        assert!(accepted < iterations, "every mutation decoded: the mutator is broken");
    }
}
