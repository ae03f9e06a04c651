//! What a connection task needs of its socket beyond reading and writing: waiting for
//! readability without a buffer, and reads that say when their bytes arrived.
//!
//! TCP asks the kernel for receive timestamps (`SO_TIMESTAMPNS`): each read returns the
//! time the newest bytes it read arrived, which orders requests of one client across
//! its connections (see `order`). Unix sockets and TLS have no such time; their reads
//! are stamped when they return.

use bytes::{BufMut, BytesMut};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use tokio::io::{AsyncRead, AsyncReadExt, Interest};

/// Told around each read system call (see `order::Member`).
pub trait ReadHook: Sync {
    /// Just before the system call.
    fn before(&self);
    /// The call found nothing to read (it will be tried again once readable).
    fn nothing(&self);
}

/// No hook.
impl ReadHook for () {
    fn before(&self) {}
    fn nothing(&self) {}
}

pub trait ClientSocket {
    /// Waits until a read will not block, without a buffer.
    fn ready_to_read(&self) -> impl Future<Output = io::Result<()>> + Send;

    /// The descriptor of the socket underneath (for [`hung_up`]).
    fn socket_fd(&self) -> RawFd;

    /// Makes room for `room` bytes in `buf` and reads at most `limit` bytes into it,
    /// telling `hook` around the system call. Returns the count and the arrival time of
    /// the newest byte read (nanoseconds since the Unix epoch), where the kernel gives
    /// it. An empty `buf` is given back while the read waits: an idle connection holds
    /// no buffer.
    fn read_stamped(
        &mut self,
        buf: &mut BytesMut,
        room: usize,
        limit: usize,
        hook: &dyn ReadHook,
    ) -> impl Future<Output = io::Result<(usize, Option<u64>)>> + Send;
}

impl ClientSocket for tokio::net::TcpStream {
    async fn ready_to_read(&self) -> io::Result<()> {
        self.readable().await
    }

    fn socket_fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    async fn read_stamped(
        &mut self,
        buf: &mut BytesMut,
        room: usize,
        limit: usize,
        hook: &dyn ReadHook,
    ) -> io::Result<(usize, Option<u64>)> {
        loop {
            self.readable().await?;
            buf.reserve(room);
            hook.before();
            let fd = self.as_raw_fd();
            let mut read = None;
            let tried = self.try_io(Interest::READABLE, || {
                let wanted = buf.capacity() - buf.len();
                let (n, at) = recv_stamped(fd, buf, limit)?;
                read = Some((n, at));
                // A short read emptied the socket: answer "would block" so that tokio
                // clears the readiness it saw before the read, as its own reads do
                // (bytes that arrived meanwhile set it again). Otherwise the next wait
                // returns at once and costs a read that finds nothing.
                if n > 0 && n < wanted.min(limit) {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match (read, tried) {
                (Some(result), _) => return Ok(result),
                (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    hook.nothing();
                    // Nothing there after all: wait for the next bytes without holding
                    // a buffer.
                    if buf.is_empty() {
                        *buf = BytesMut::new();
                    }
                }
                (None, Err(e)) => return Err(e),
                (None, Ok(())) => return Ok((0, None)),
            }
        }
    }
}

impl ClientSocket for tokio::net::UnixStream {
    async fn ready_to_read(&self) -> io::Result<()> {
        self.readable().await
    }

    fn socket_fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    /// The hook is not told: the read may wait inside for the socket, and a
    /// connection marked as reading while it waits would hold its client's others
    /// back. They see its unread bytes in the kernel instead.
    async fn read_stamped(
        &mut self,
        buf: &mut BytesMut,
        room: usize,
        limit: usize,
        _hook: &dyn ReadHook,
    ) -> io::Result<(usize, Option<u64>)> {
        read_unstamped(self, buf, room, limit).await
    }
}

impl ClientSocket for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    /// TLS may hold decrypted bytes already read from the socket: read at once.
    async fn ready_to_read(&self) -> io::Result<()> {
        Ok(())
    }

    fn socket_fd(&self) -> RawFd {
        self.get_ref().0.as_raw_fd()
    }

    /// The TLS layer waits for the socket inside the read, so the hook is not told:
    /// other connections see this one's unread bytes in the kernel instead.
    async fn read_stamped(
        &mut self,
        buf: &mut BytesMut,
        room: usize,
        limit: usize,
        _hook: &dyn ReadHook,
    ) -> io::Result<(usize, Option<u64>)> {
        read_unstamped(self, buf, room, limit).await
    }
}

/// A plain read of at most `limit` bytes into room for `room`, with no arrival time.
async fn read_unstamped<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    room: usize,
    limit: usize,
) -> io::Result<(usize, Option<u64>)> {
    buf.reserve(room);
    let n = stream.read_buf(&mut (&mut *buf).limit(limit)).await?;
    Ok((n, None))
}

/// True when the peer of socket `fd` has closed its side (or the connection failed),
/// asked without reading: bytes it sent before may still wait unread.
pub fn hung_up(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call, which does not block
    // (timeout 0); `fd` is the caller's open socket.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Asks the kernel to stamp what a TCP socket receives (`SO_TIMESTAMPNS`).
pub fn enable_timestamps(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the option value is a C int read by the kernel during the call; `fd` is
    // the caller's open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One `recvmsg` into `buf`'s spare room (at most `limit` bytes), with the receive
/// timestamp of the newest bytes read when the socket has them enabled.
fn recv_stamped(fd: RawFd, buf: &mut BytesMut, limit: usize) -> io::Result<(usize, Option<u64>)> {
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(limit);
    let mut iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: len,
    };
    // Room for one timespec control message, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is a valid empty header; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: the iovec points at `len` bytes of `buf`'s spare capacity and the control
    // buffer at `control`, both valid and unaliased for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.advance_mut(n) };
    Ok((n, timestamp(&msg)))
}

/// The `SCM_TIMESTAMPNS` control message of a received message, in nanoseconds.
fn timestamp(msg: &libc::msghdr) -> Option<u64> {
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/CMSG_NXTHDR stay within its
    // control buffer, and CMSG_DATA of a SCM_TIMESTAMPNS message holds a timespec
    // (read unaligned).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                let secs = u64::try_from(ts.tv_sec).ok()?;
                let nanos = u64::try_from(ts.tv_nsec).ok()?;
                return Some(secs * 1_000_000_000 + nanos);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[derive(Default)]
    struct Told(std::sync::atomic::AtomicBool);

    impl ReadHook for Told {
        fn before(&self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        fn nothing(&self) {}
    }

    #[tokio::test]
    async fn tcp_reads_carry_the_arrival_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        enable_timestamps(server.as_raw_fd()).unwrap();
        // The kernel turns stamping on for the whole machine after the first socket
        // asks, a little later: until then packets come unstamped.
        let mut stamped = false;
        for _ in 0..200 {
            client.write_all(b"w").await.unwrap();
            let mut buf = BytesMut::with_capacity(8);
            let (_, at) = server.read_stamped(&mut buf, 8, 8, &()).await.unwrap();
            if at.is_some() {
                stamped = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(stamped, "no receive timestamp within a second");
        let before_send = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        client.write_all(b"hello").await.unwrap();
        // Let the bytes sit a while: the stamp is their arrival, not the read.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut buf = BytesMut::with_capacity(64);
        let hook = Told::default();
        let (n, at) = server.read_stamped(&mut buf, 64, 64, &hook).await.unwrap();
        assert_eq!((n, &buf[..]), (5, &b"hello"[..]));
        assert!(hook.0.load(std::sync::atomic::Ordering::SeqCst));
        let at = at.expect("a receive timestamp");
        assert!(
            at >= before_send && at < before_send + 40_000_000,
            "{at} vs {before_send}"
        );
        // A limit is honoured.
        client.write_all(b"0123456789").await.unwrap();
        let mut buf = BytesMut::with_capacity(64);
        let (n, _) = server.read_stamped(&mut buf, 64, 4, &()).await.unwrap();
        assert_eq!(&buf[..n], b"0123");
    }
}
