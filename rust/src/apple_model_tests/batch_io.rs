//! `adaptor/batch_io.rs`'s macOS path (`recvmsg_x`/`sendmsg_x`, found with
//! `dlsym`) against the model's calls (rust/apple-model/src/socket.rs,
//! XNU's semantics): batches through a socketpair, the cut-datagram rule,
//! send chunking at the send limit, a full peer, an empty socket, a
//! `datagram_next` adaptor relaying through them; and the calls themselves
//! where batch_io's wrappers hide what XNU returns.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{own_process, Expect};
use crate::adaptor::batch_io::{self, msg_x};
use crate::model_test_name;

fn pair() -> (OwnedFd, OwnedFd) {
    let (a, b) = crate::adaptor::socket::socketpair(crate::adaptor::Kind::Datagram).expect("socketpair");
    crate::adaptor::socket::set_nonblocking(&a).expect("nonblocking");
    crate::adaptor::socket::set_nonblocking(&b).expect("nonblocking");
    (a, b)
}

fn functions() -> msg_x::Functions {
    msg_x::functions().expect("recvmsg_x/sendmsg_x resolve in the model")
}

/// Sets `SO_SNDBUF` to `n` and returns what it reads back: the send
/// high-water mark the model's `sendmsg_x` checks each datagram against.
fn send_buffer(fd: RawFd, n: libc::c_int) -> usize {
    crate::sys::set_int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, n).expect("set SO_SNDBUF");
    crate::sys::get_int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).expect("read SO_SNDBUF") as usize
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// One `recvmsg_x` call over headers for `bufs` (`cnt` of them, or all),
/// with each header's `msg_flags` preset to `preset`: the return, errno
/// when it is -1, and each header's `(msg_datalen, msg_flags)`.
fn recv_x(fd: RawFd, bufs: &mut [Vec<u8>], cnt: u32, flags: i32, preset: i32) -> (isize, i32, Vec<(usize, i32)>) {
    let mut iovs: Vec<libc::iovec> = bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    let mut msgs: Vec<msg_x::msghdr_x> = iovs.iter_mut().map(msg_x::header).collect();
    for m in &mut msgs {
        m.msg_flags = preset;
    }
    // SAFETY: msgs holds at least cnt headers (or the call is refused on
    // cnt first), each over a live buffer; the array is writable.
    let r = unsafe { (functions().recv)(fd, msgs.as_mut_ptr(), cnt, flags) };
    let e = if r < 0 { errno() } else { 0 };
    (r, e, msgs.iter().map(|m| (m.msg_datalen, m.msg_flags)).collect())
}

/// One `sendmsg_x` call over `frames`: the return and errno when it is -1.
fn send_x(fd: RawFd, frames: &[&[u8]], flags: i32) -> (isize, i32) {
    let mut iovs: Vec<libc::iovec> = frames.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() }).collect();
    let mut msgs: Vec<msg_x::msghdr_x> = iovs.iter_mut().map(msg_x::header).collect();
    // SAFETY: one header per frame, each over a live frame, only read.
    let r = unsafe { (functions().send)(fd, msgs.as_mut_ptr(), msgs.len() as u32, flags) };
    (r, if r < 0 { errno() } else { 0 })
}

/// Receives everything waiting on `fd`: the datagrams' first bytes.
fn drain(fd: RawFd) -> Vec<u8> {
    let mut bufs = vec![vec![0u8; 70_000]; 16];
    let (mut lens, mut cut) = ([0usize; 16], [false; 16]);
    let mut firsts = Vec::new();
    loop {
        match batch_io::recv_batch(fd, &mut bufs, &mut lens, &mut cut) {
            Ok(n) => firsts.extend((0..n).map(|i| bufs[i][0])),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return firsts,
            Err(e) => panic!("receive: {e}"),
        }
    }
}

#[test]
fn a_batch_is_sent_and_received_through_a_socketpair() {
    own_process(model_test_name!("a_batch_is_sent_and_received_through_a_socketpair"), Expect::Pass, || {
        assert!(batch_io::batched_available(), "the model's recvmsg_x/sendmsg_x are found with dlsym");
        let (a, b) = pair();
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 20 + i as usize]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        assert_eq!(batch_io::send_batch(a.as_raw_fd(), &refs, usize::MAX).unwrap(), 5);
        let mut bufs = vec![vec![0u8; 64]; 8];
        let (mut lens, mut cut) = ([0usize; 8], [false; 8]);
        assert_eq!(batch_io::recv_batch(b.as_raw_fd(), &mut bufs[..3], &mut lens[..3], &mut cut[..3]).unwrap(), 3, "a batch stops at its count");
        assert_eq!(batch_io::recv_batch(b.as_raw_fd(), &mut bufs[3..], &mut lens[3..], &mut cut[3..]).unwrap(), 2, "and takes what is there");
        for i in 0..5 {
            assert_eq!((&bufs[i][..lens[i]], cut[i]), (frames[i].as_slice(), false));
        }
    });
}

#[test]
fn a_datagram_filling_its_buffer_is_cut_and_no_msg_trunc_is_reported() {
    own_process(model_test_name!("a_datagram_filling_its_buffer_is_cut_and_no_msg_trunc_is_reported"), Expect::Pass, || {
        let (a, b) = pair();
        let cap = batch_io::receive_buffer_len(60);
        batch_io::send_each(a.as_raw_fd(), &[&[1u8; 61][..], &[2u8; 60], &[3u8; 100]]).unwrap();
        let mut bufs = vec![vec![0u8; cap]; 4];
        let (mut lens, mut cut) = ([0usize; 4], [false; 4]);
        assert_eq!(batch_io::recv_batch(b.as_raw_fd(), &mut bufs, &mut lens, &mut cut).unwrap(), 3);
        assert_eq!((lens[0], cut[0]), (61, true), "one byte over the largest frame fills the buffer: cut");
        assert_eq!((lens[1], cut[1]), (60, false), "the largest frame passes");
        assert_eq!((lens[2], cut[2]), (61, true), "a longer datagram is cut to the buffer, and counted as cut");
        // The call itself: msg_datalen cut to the buffer, msg_flags cleared
        // (whatever it held), no MSG_TRUNC.
        batch_io::send_each(a.as_raw_fd(), &[&[4u8; 100][..], &[5u8; 10]]).unwrap();
        let mut small = vec![vec![0u8; 50]; 2];
        let (r, _, headers) = recv_x(b.as_raw_fd(), &mut small, 2, crate::darwin_shim::MSG_DONTWAIT, libc::MSG_TRUNC | 0x100);
        assert_eq!(r, 2);
        assert_eq!(headers, vec![(50, 0), (10, 0)]);
        assert_eq!(&small[0][..], &[4u8; 50][..]);
    });
}

#[test]
fn sends_stop_before_a_frame_over_the_send_limit() {
    own_process(model_test_name!("sends_stop_before_a_frame_over_the_send_limit"), Expect::Pass, || {
        let (a, b) = pair();
        let hiwat = send_buffer(a.as_raw_fd(), 4096);
        let big = vec![2u8; hiwat + 1000];
        let frames: Vec<&[u8]> = vec![&[0u8; 100], &[1u8; 100], &big, &[3u8; 100], &[4u8; 100]];
        // XNU's rule, per datagram against the high-water mark: a later
        // one too large ends the batch with the count so far; the first
        // too large fails the call.
        assert_eq!(send_x(a.as_raw_fd(), &frames, crate::darwin_shim::MSG_DONTWAIT), (2, 0));
        assert_eq!(send_x(a.as_raw_fd(), &frames[2..], crate::darwin_shim::MSG_DONTWAIT), (-1, libc::EMSGSIZE));
        assert_eq!(drain(b.as_raw_fd()), vec![0, 1]);
        // batch_io: a call stops before the frame over the limit it was
        // granted, which goes alone and fails alone.
        assert_eq!(batch_io::send_batch(a.as_raw_fd(), &frames, hiwat).unwrap(), 2);
        let err = batch_io::send_batch(a.as_raw_fd(), &frames[2..], hiwat).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
        assert_eq!(batch_io::send_batch(a.as_raw_fd(), &frames[3..], hiwat).unwrap(), 2);
        assert_eq!(drain(b.as_raw_fd()), vec![0, 1, 3, 4]);
        // A limit granted higher than the kernel's (stale): the refused
        // batch is re-sent frame by frame, so only the big frame fails.
        let err = batch_io::send_batch(a.as_raw_fd(), &frames[2..], usize::MAX).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
        // A frame over the granted limit but within the kernel's goes alone
        // and arrives, in order.
        let mid = vec![7u8; 600];
        let frames: Vec<&[u8]> = vec![&[5u8; 100], &mid, &[6u8; 100]];
        assert_eq!(batch_io::send_batch(a.as_raw_fd(), &frames, 500).unwrap(), 3);
        assert_eq!(drain(b.as_raw_fd()), vec![5, 7, 6]);
    });
}

#[test]
fn a_full_peer_takes_the_count_so_far_then_enobufs() {
    own_process(model_test_name!("a_full_peer_takes_the_count_so_far_then_enobufs"), Expect::Pass, || {
        let (a, b) = pair();
        send_buffer(a.as_raw_fd(), 16_384);
        let frame = [9u8; 1000];
        let frames: Vec<&[u8]> = vec![&frame; 64];
        let (r, _) = send_x(a.as_raw_fd(), &frames, crate::darwin_shim::MSG_DONTWAIT);
        assert!(r > 0 && r < 64, "a full Unix-domain peer ends the batch with the count so far: {r}");
        // Nothing fits now: XNU's uipc_send fails with ENOBUFS, not EAGAIN.
        assert_eq!(send_x(a.as_raw_fd(), &frames, crate::darwin_shim::MSG_DONTWAIT), (-1, libc::ENOBUFS));
        let err = batch_io::send_batch(a.as_raw_fd(), &frames, usize::MAX).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOBUFS));
        assert_eq!(drain(b.as_raw_fd()).len(), r as usize);
    });
}

#[test]
fn an_empty_socket_would_block_and_bad_calls_are_refused() {
    own_process(model_test_name!("an_empty_socket_would_block_and_bad_calls_are_refused"), Expect::Pass, || {
        let (a, b) = pair();
        let mut bufs = vec![vec![0u8; 64]; 4];
        let (mut lens, mut cut) = ([0usize; 4], [false; 4]);
        let err = batch_io::recv_batch(b.as_raw_fd(), &mut bufs, &mut lens, &mut cut).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let dontwait = crate::darwin_shim::MSG_DONTWAIT;
        assert_eq!(recv_x(b.as_raw_fd(), &mut bufs, 4, dontwait, 0).0, -1);
        assert_eq!(recv_x(b.as_raw_fd(), &mut bufs, 4, dontwait, 0).1, libc::EAGAIN, "nothing to take: -1 with EWOULDBLOCK, never 0");
        batch_io::send_each(a.as_raw_fd(), &[&[1u8; 10]]).unwrap();
        assert_eq!(recv_x(b.as_raw_fd(), &mut bufs, 0, dontwait, 0).1, libc::EINVAL, "cnt 0");
        assert_eq!(recv_x(b.as_raw_fd(), &mut bufs, 1025, dontwait, 0).1, libc::EINVAL, "cnt over UIO_MAXIOV");
        assert_eq!(recv_x(b.as_raw_fd(), &mut bufs, 4, dontwait | 0x2, 0).1, libc::EINVAL, "MSG_PEEK");
        assert_eq!(recv_x(b.as_raw_fd(), &mut bufs, 4, libc::MSG_DONTWAIT, 0).1, libc::EINVAL, "Linux's MSG_DONTWAIT is Darwin's MSG_WAITALL");
        assert_eq!(recv_x(b.as_raw_fd(), &mut bufs, 4, dontwait, 0).0, 1, "the refused calls took nothing");
        assert_eq!(send_x(a.as_raw_fd(), &[&[1u8; 10]], dontwait | 0x80000).1, libc::EINVAL, "Darwin's MSG_NOSIGNAL: sosend_list takes MSG_DONTWAIT and MSG_NBIO only");
        assert_eq!(send_x(a.as_raw_fd(), &[&[1u8; 10]], 0x40000).1, libc::EPERM, "MSG_SKIPCFIL");
    });
}

#[test]
fn a_batch_is_capped_at_kern_ipc_maxrecvmsgx() {
    own_process(model_test_name!("a_batch_is_capped_at_kern_ipc_maxrecvmsgx"), Expect::Pass, || {
        let (a, b) = pair();
        let queued = (0..300).take_while(|_| batch_io::send_each(a.as_raw_fd(), &[&[1u8]]).is_ok()).count();
        assert!(queued > 256, "the socketpair queued only {queued} one-byte datagrams");
        let mut bufs = vec![vec![0u8; 8]; 300];
        let (r, _, _) = recv_x(b.as_raw_fd(), &mut bufs, 300, crate::darwin_shim::MSG_DONTWAIT, 0);
        assert_eq!(r, 256, "cnt above kern.ipc.maxrecvmsgx (256) is cut to it");
    });
}

extern "C" {
    fn vmnet_model_msg_x_counts(out: *mut u64);
}

/// The model's `recvmsg_x`/`sendmsg_x` counts in this process: calls and
/// datagrams received, calls and datagrams sent.
fn msg_x_counts() -> [u64; 4] {
    let mut c = [0u64; 4];
    // SAFETY: 4 writable u64s.
    unsafe { vmnet_model_msg_x_counts(c.as_mut_ptr()) };
    c
}

#[test]
fn a_datagram_next_adaptor_relays_through_the_batch_calls() {
    own_process(model_test_name!("a_datagram_next_adaptor_relays_through_the_batch_calls"), Expect::Pass, || {
        use crate::adaptor::testing::pair_interface;
        use crate::adaptor::{Adaptor, Kind, Options};
        use std::os::unix::net::UnixDatagram;
        use std::time::{Duration, Instant};

        const MAX: usize = 1514;
        let patience = Duration::from_secs(20);
        let frame = |seq: u8| -> Vec<u8> { (0..60 + 31 * seq as usize).map(|i| (i as u8).wrapping_add(seq)).collect() };
        let (iface, network) = pair_interface(MAX);
        let handles = iface.handles();
        // Network to VM: 40 frames queued before the relay starts, so its
        // first read takes them all and relays them as one batch.
        for seq in 0..40 {
            let f = frame(seq);
            // SAFETY: a live buffer of its length, on the test's blocking end.
            let r = unsafe { libc::send(network.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            assert_eq!(r, f.len() as isize);
        }
        let (mut adaptor, vm) = Adaptor::start(Box::new(iface), Kind::DatagramNext, &Options::default()).expect("start");
        let vm = UnixDatagram::from(vm);
        vm.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + patience;
        let mut buf = vec![0u8; 65_536];
        while got.len() < 40 && Instant::now() < deadline {
            match vm.recv(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("VM recv: {e}"),
            }
        }
        assert_eq!(got, (0..40).map(frame).collect::<Vec<_>>());

        // VM to network: 40 frames, and one a byte over the largest frame
        // (it fills its buffer: cut, counted, not passed on).
        for seq in 0..20 {
            vm.send(&frame(seq)).unwrap();
        }
        vm.send(&vec![0xaa; MAX + 1]).unwrap();
        for seq in 20..40 {
            vm.send(&frame(seq)).unwrap();
        }
        crate::test_support::wait_until("the VM's frames reach the network", patience, || handles.written.lock().unwrap().len() == 40);
        assert_eq!(*handles.written.lock().unwrap(), (0..40).map(frame).collect::<Vec<_>>());
        crate::test_support::wait_until("the cut datagram is counted", patience, || adaptor.stats().vm_to_host.errors == 1);

        adaptor.stop();

        let [recv_calls, received, send_calls, sent] = msg_x_counts();
        assert_eq!(received, 41, "every datagram from the VM came through recvmsg_x ({recv_calls} calls)");
        // Frames to the VM go through sendmsg_x in chunks of two or more (a
        // lone frame goes by send): at least the first batch of 40 did.
        assert!(send_calls > 0 && (2..=40).contains(&sent), "{sent} frames in {send_calls} sendmsg_x calls");
        assert!(recv_calls > 0);
    });
}
