//! Which of many sockets have bytes to read, in one system call: an epoll set of them
//! (level-triggered, `EPOLLIN`), polled without waiting. The order of a client's
//! requests across its connections needs to know which of a tag's connections have
//! unread bytes; asking the kernel socket by socket (`FIONREAD`) cost one system call
//! per connection for every request, a hundred or more per request with a forwarder's
//! pool or a daemon-wide tag. Tokio's own epoll set is edge-triggered and private; a
//! socket may be in several sets.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// At most this many ready sockets are taken from one poll; past that the caller asks
/// each socket itself.
const MAX_READY: usize = 1024;

pub struct Readiness {
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Readiness {
    pub fn new() -> io::Result<Readiness> {
        // SAFETY: no pointers; the descriptor returned is owned by the OwnedFd below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Readiness {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            events: Vec::new(),
        })
    }

    /// Watches socket `fd`, known as `id`.
    pub fn add(&self, fd: RawFd, id: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: id,
        };
        // SAFETY: `event` is valid for the call; the kernel copies it.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching socket `fd` (before it is closed).
    pub fn remove(&self, fd: RawFd) {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; a socket not in the set is an error that changes nothing.
        unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut event);
        }
    }

    /// The ids of the watched sockets that are readable now (bytes to read, or the
    /// peer's end); `None` when they could not all be taken (ask each socket then).
    /// `watched`: how many sockets are in the set.
    pub fn ready(&mut self, watched: usize) -> Option<HashSet<u64>> {
        let room = watched.clamp(1, MAX_READY);
        self.events.clear();
        self.events.reserve(room);
        let max = libc::c_int::try_from(room).unwrap_or(libc::c_int::MAX);
        // SAFETY: the buffer has room for `room` events; the kernel writes at most
        // that many and returns how many it wrote; a zero timeout does not block.
        let n =
            unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), self.events.as_mut_ptr(), max, 0) };
        let n = usize::try_from(n).ok()?;
        if n == room && watched > room {
            return None;
        }
        // SAFETY: the kernel initialised the first `n` events.
        unsafe { self.events.set_len(n) };
        Some(self.events.iter().map(|e| e.u64).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn tells_which_sockets_have_bytes_to_read() {
        let mut r = Readiness::new().unwrap();
        let (mut a_peer, a) = UnixStream::pair().unwrap();
        let (_b_peer, b) = UnixStream::pair().unwrap();
        r.add(a.as_raw_fd(), 1).unwrap();
        r.add(b.as_raw_fd(), 2).unwrap();
        assert_eq!(r.ready(2), Some(HashSet::new()));
        a_peer.write_all(b"x").unwrap();
        assert_eq!(r.ready(2), Some(HashSet::from([1])));
        // Level-triggered: still readable until read.
        assert_eq!(r.ready(2), Some(HashSet::from([1])));
        r.remove(a.as_raw_fd());
        assert_eq!(r.ready(1), Some(HashSet::new()));
    }
}
