//! Open descriptors passed over the daemon's UNIX socket (`SCM_RIGHTS`): `cnspr connect`
//! and `cnspr listen` hand their standard input and output pipes to the daemon, which then
//! moves the stream's bytes between those pipes and QUIC itself, with no copy through the
//! command (docs/api.md, "Descriptors passed"). The module is the system calls' thin
//! wrapper, hence its `unsafe` blocks, each with what makes it sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Descriptors passed with a `connect` or `accept` that asked for it: the stream's input
/// (read by the daemon), then its output (written by the daemon).
pub const STREAM_FDS: usize = 2;

const FD: usize = std::mem::size_of::<RawFd>();

/// Room for `n` descriptors in one control message, in `u64`s (aligned for `cmsghdr`).
fn control_words(n: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    let bytes = unsafe { libc::CMSG_SPACE((n * FD) as u32) } as usize;
    bytes.div_ceil(8)
}

/// Sends `fds` to the other end of the connected UNIX socket `sock`, with one byte of
/// data (a message must carry some).
pub fn send(sock: RawFd, fds: &[RawFd]) -> io::Result<()> {
    let byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let mut control = vec![0u64; control_words(fds.len())];
    // SAFETY: msghdr is plain data; zero is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = (control.len() * 8) as _;
    // SAFETY: the control buffer has room for one header and `fds.len()` descriptors
    // (CMSG_SPACE), and is aligned for cmsghdr; CMSG_FIRSTHDR is not null for it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN((fds.len() * FD) as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
    }
    loop {
        // SAFETY: msg points to live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        match n {
            1 => return Ok(()),
            0 => return Err(io::ErrorKind::WriteZero.into()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Receives one byte and the descriptors that came with it from `sock` (without waiting:
/// `WouldBlock` when nothing is there yet). At most `max` descriptors are taken, marked
/// close-on-exec; a message that carried more is refused (every descriptor received is
/// closed), as is a connection closed before anything came.
pub fn recv(sock: RawFd, max: usize) -> io::Result<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = vec![0u64; control_words(max)];
    // SAFETY: as in `send`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = (control.len() * 8) as _;
    let n = loop {
        // SAFETY: msg points to live buffers for the duration of the call.
        let n =
            unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
        if n >= 0 {
            break n;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_controllen` bytes of well-formed control messages;
    // every SCM_RIGHTS descriptor is now ours, owned once.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let p = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..data / FD {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed before the descriptors came",
        ));
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {max} descriptors passed"),
        ));
    }
    Ok(fds)
}

/// Whether `fd` is a pipe or FIFO (what the daemon can wait on and take over).
pub fn is_pipe(fd: RawFd) -> bool {
    // SAFETY: stat is plain data; fstat writes it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0) && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
}

/// Asks for a pipe buffer of `bytes` (best effort: the pipe stays as it was if the
/// system refuses).
pub fn set_pipe_size(fd: RawFd, bytes: i32) {
    // SAFETY: fcntl on a descriptor the caller holds open; no memory is passed.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, bytes) };
}

/// Points the standard descriptor `fd` (0, 1) at `/dev/null`: this process lets go of
/// what it was (a pipe handed to the daemon) while the number stays valid.
pub fn close_to_null(fd: RawFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: dup2 replaces `fd` atomically; nothing in this process holds it as owned
    // (the standard streams refer to it by number only).
    if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new pipe: (read end, write end), close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array or fails.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_pass_and_work_on_the_other_side() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = pipe().unwrap();
        send(a.as_raw_fd(), &[r.as_raw_fd(), w.as_raw_fd()]).unwrap();
        drop((r, w));
        let mut got = recv(b.as_raw_fd(), STREAM_FDS).unwrap().into_iter();
        let (r, w) = (got.next().unwrap(), got.next().unwrap());
        assert!(is_pipe(r.as_raw_fd()) && is_pipe(w.as_raw_fd()));
        let mut w = std::fs::File::from(w);
        w.write_all(b"through").unwrap();
        drop(w);
        let mut buf = String::new();
        std::fs::File::from(r).read_to_string(&mut buf).unwrap();
        assert_eq!(buf, "through");
    }

    #[test]
    fn too_many_descriptors_are_refused_and_none_is_kept() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = pipe().unwrap();
        let (r2, _w2) = pipe().unwrap();
        send(
            a.as_raw_fd(),
            &[r.as_raw_fd(), w.as_raw_fd(), r2.as_raw_fd()],
        )
        .unwrap();
        let e = recv(b.as_raw_fd(), STREAM_FDS).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // The write end we passed was closed on the far side: only ours keeps it open.
        drop(w);
        let mut rf = std::fs::File::from(r);
        let mut buf = Vec::new();
        assert_eq!(
            rf.read_to_end(&mut buf).unwrap(),
            0,
            "EOF: no copy left open"
        );
    }

    #[test]
    fn nothing_yet_would_block_and_a_closed_peer_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let e = recv(b.as_raw_fd(), STREAM_FDS).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        let e = recv(b.as_raw_fd(), STREAM_FDS).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(!is_pipe(b.as_raw_fd()));
    }
}
