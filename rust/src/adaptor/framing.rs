//! The stream framing every stream VM socket uses (QEMU `-netdev stream` /
//! `socket`, krunkit `unixstream`, the broker's stream endpoints): each
//! frame is prefixed by its length as a 4-byte big-endian integer.
//!
//! One place for the format: the relay (`vm_stream.rs`), the bench and the
//! tests encode and decode headers here. Pure functions plus two blocking
//! helpers for tests and tools; any thread.

use std::io::{self, Read, Write};

/// The relay's reader of this format, for the fuzz targets
/// (`crate::fuzzing`, feature `fuzzing`; `vm_stream` is private to the
/// adaptor module).
#[cfg(feature = "fuzzing")]
pub(crate) use super::vm_stream::{StreamEnd, StreamReader};

/// Bytes in a frame's length header.
pub const HEADER_BYTES: usize = 4;

/// The header for a frame of `len` bytes.
pub fn header(len: usize) -> [u8; HEADER_BYTES] {
    (len as u32).to_be_bytes()
}

/// The frame length a header announces; `bytes` holds at least the header
/// (only its first [`HEADER_BYTES`] are read).
pub fn frame_len(bytes: &[u8]) -> usize {
    let mut h = [0u8; HEADER_BYTES];
    h.copy_from_slice(&bytes[..HEADER_BYTES]);
    u32::from_be_bytes(h) as usize
}

/// Appends `frame` with its header to `out`.
pub fn push_frame(out: &mut Vec<u8>, frame: &[u8]) {
    out.extend_from_slice(&header(frame.len()));
    out.extend_from_slice(frame);
}

/// Writes one frame with its header (blocking).
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(&header(frame.len()))?;
    w.write_all(frame)
}

/// Reads one frame (blocking): its header, then exactly that many bytes.
pub fn read_frame(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut h = [0u8; HEADER_BYTES];
    r.read_exact(&mut h)?;
    let mut frame = vec![0u8; frame_len(&h)];
    r.read_exact(&mut frame)?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_big_endian_lengths() {
        assert_eq!(header(1514), [0, 0, 0x05, 0xea]);
        assert_eq!(frame_len(&[0, 1, 0, 0, 0xff]), 65_536);
        let mut bytes = Vec::new();
        push_frame(&mut bytes, &[1, 2, 3]);
        write_frame(&mut bytes, &[]).unwrap();
        write_frame(&mut bytes, &[9; 300]).unwrap();
        assert_eq!(&bytes[..7], &[0, 0, 0, 3, 1, 2, 3]);
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r).unwrap(), vec![1, 2, 3]);
        assert_eq!(read_frame(&mut r).unwrap(), Vec::<u8>::new());
        assert_eq!(read_frame(&mut r).unwrap(), vec![9; 300]);
        assert_eq!(read_frame(&mut r).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
