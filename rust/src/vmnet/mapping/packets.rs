//! `struct vmpktdesc` ([`VmPktDesc`]) and the scratch descriptors of one
//! `vmnet_read` / `vmnet_write` call ([`PacketBatch`]).


/// `struct vmpktdesc` (vmnet/vmnet.h): 24 bytes on LP64, fields at 0, 8, 16
/// and 20. Declared here, not in the Apple FFI module, so its layout and the
/// batch logic below are tested on every OS (`iovec` has the same layout on
/// Linux and macOS).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VmPktDesc {
    pub vm_pkt_size: usize,
    pub vm_pkt_iov: *mut libc::iovec,
    pub vm_pkt_iovcnt: u32,
    pub vm_flags: u32,
}

/// Scratch descriptors for one `vmnet_read` / `vmnet_write` call: one iovec
/// per packet (multi-iovec packets fail with `VMNET_INVALID_ARGUMENT`, as
/// QEMU reports), sizes reset to each buffer's full capacity before every
/// read, flags zero.
///
/// Invariant: after a `prepare_*` call, `descs[i].vm_pkt_iov` points at
/// `iovs[i]`, which points at the caller's buffer `i`; the pointers are only
/// valid until the caller's buffers go away, so they are used for exactly
/// one vmnet call and rebuilt by the next `prepare_*`.
#[derive(Debug, Default)]
pub struct PacketBatch {
    iovs: Vec<libc::iovec>,
    descs: Vec<VmPktDesc>,
}

impl PacketBatch {
    pub fn with_capacity(packets: usize) -> PacketBatch {
        PacketBatch { iovs: Vec::with_capacity(packets), descs: Vec::with_capacity(packets) }
    }

    fn link(&mut self) {
        self.descs.clear();
        for iov in self.iovs.iter_mut() {
            self.descs.push(VmPktDesc { vm_pkt_size: iov.iov_len, vm_pkt_iov: iov, vm_pkt_iovcnt: 1, vm_flags: 0 });
        }
    }

    /// Describes up to `limit` of `bufs` for a read; every buffer must hold
    /// `max_frame` bytes. Returns how many descriptors are ready.
    pub fn prepare_read(&mut self, bufs: &mut [&mut [u8]], max_frame: usize, limit: usize) -> std::io::Result<usize> {
        let n = bufs.len().min(limit);
        self.iovs.clear();
        for buf in bufs[..n].iter_mut() {
            if buf.len() < max_frame {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("read buffer of {} bytes is smaller than the max frame {max_frame}", buf.len()),
                ));
            }
            self.iovs.push(libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() });
        }
        self.link();
        Ok(n)
    }

    /// Describes up to `limit` of `frames` for a write; each must be
    /// 1..=`max_frame` bytes. Returns how many descriptors are ready.
    pub fn prepare_write(&mut self, frames: &[&[u8]], max_frame: usize, limit: usize) -> std::io::Result<usize> {
        let n = frames.len().min(limit);
        self.iovs.clear();
        for frame in &frames[..n] {
            if frame.is_empty() || frame.len() > max_frame {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("frame of {} bytes is outside 1..={max_frame}", frame.len()),
                ));
            }
            // vmnet only reads through this pointer on a write.
            self.iovs.push(libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() });
        }
        self.link();
        Ok(n)
    }

    /// The descriptor array for the vmnet call.
    pub fn as_mut_ptr(&mut self) -> *mut VmPktDesc {
        self.descs.as_mut_ptr()
    }

    pub fn descs(&self) -> &[VmPktDesc] {
        &self.descs
    }

    /// After a read: clamps vmnet's packet count to what was prepared
    /// (0 is a normal answer, not an error) and copies the sizes out.
    pub fn finish_read(&self, count: i32, lens: &mut [usize]) -> usize {
        let count = (count.max(0) as usize).min(self.descs.len()).min(lens.len());
        for (len, desc) in lens.iter_mut().zip(&self.descs[..count]) {
            *len = desc.vm_pkt_size;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmpktdesc_has_the_sdk_layout() {
        assert_eq!(std::mem::size_of::<VmPktDesc>(), 24);
        assert_eq!(std::mem::offset_of!(VmPktDesc, vm_pkt_size), 0);
        assert_eq!(std::mem::offset_of!(VmPktDesc, vm_pkt_iov), 8);
        assert_eq!(std::mem::offset_of!(VmPktDesc, vm_pkt_iovcnt), 16);
        assert_eq!(std::mem::offset_of!(VmPktDesc, vm_flags), 20);
    }

    #[test]
    fn read_batch_points_each_descriptor_at_its_buffer() {
        let mut storage = vec![vec![0u8; 2048]; 4];
        let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| b.as_mut_slice()).collect();
        let addrs: Vec<usize> = bufs.iter_mut().map(|b| b.as_mut_ptr() as usize).collect();
        let mut batch = PacketBatch::with_capacity(4);
        assert_eq!(batch.prepare_read(&mut bufs, 1514, 3).unwrap(), 3);
        assert_eq!(batch.descs().len(), 3);
        for (i, d) in batch.descs().iter().enumerate() {
            assert_eq!(d.vm_pkt_size, 2048);
            assert_eq!((d.vm_pkt_iovcnt, d.vm_flags), (1, 0));
            // SAFETY: the descriptor points into the batch's own iovecs.
            let iov = unsafe { &*d.vm_pkt_iov };
            assert_eq!(iov.iov_base as usize, addrs[i]);
            assert_eq!(iov.iov_len, 2048);
        }
        // Simulate vmnet shrinking sizes; the next prepare resets them.
        let ptr = batch.as_mut_ptr();
        // SAFETY: three prepared descriptors.
        unsafe { (*ptr.add(1)).vm_pkt_size = 60 };
        let mut lens = [0usize; 4];
        assert_eq!(batch.finish_read(2, &mut lens), 2);
        assert_eq!(&lens[..2], &[2048, 60]);
        assert_eq!(batch.finish_read(0, &mut lens), 0);
        assert_eq!(batch.finish_read(-1, &mut lens), 0);
        assert_eq!(batch.finish_read(99, &mut lens), 3);
        batch.prepare_read(&mut bufs, 1514, 8).unwrap();
        assert!(batch.descs().iter().all(|d| d.vm_pkt_size == 2048));
        assert_eq!(batch.descs().len(), 4);
    }

    #[test]
    fn batches_refuse_bad_sizes() {
        let mut small = vec![0u8; 100];
        let mut bufs: Vec<&mut [u8]> = vec![small.as_mut_slice()];
        let mut batch = PacketBatch::default();
        assert_eq!(batch.prepare_read(&mut bufs, 1514, 8).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
        let big = vec![0u8; 2000];
        let frames: Vec<&[u8]> = vec![&[1, 2, 3], big.as_slice()];
        assert!(batch.prepare_write(&frames, 1514, 8).is_err());
        assert!(batch.prepare_write(&[&[][..]], 1514, 8).is_err());
        assert_eq!(batch.prepare_write(&frames, 1514, 1).unwrap(), 1);
        assert_eq!(batch.descs()[0].vm_pkt_size, 3);
        assert_eq!(batch.prepare_write(&frames, 4096, 8).unwrap(), 2);
        assert_eq!(batch.descs()[1].vm_pkt_size, 2000);
    }

}
