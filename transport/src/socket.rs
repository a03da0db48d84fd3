//! UDP sockets with large buffers, for the quinn endpoint.

use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Creates a non-blocking UDP socket bound to `addr` with `buffer` bytes of send and
/// receive buffer. An unspecified IPv6 address is bound dual-stack (it also serves IPv4).
///
/// The kernel caps buffers at `net.core.[rw]mem_max` (208 KiB by default), which loses
/// packets at QUIC speeds on loopback; with CAP_NET_ADMIN the cap is lifted with
/// `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`.
pub fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
    }
    if buffer > 0 {
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
        // The kernel reports twice the requested size when it honoured the request.
        if socket.recv_buffer_size().unwrap_or(0) < buffer {
            force_buffer(&socket, libc::SO_RCVBUFFORCE, buffer);
        }
        if socket.send_buffer_size().unwrap_or(0) < buffer {
            force_buffer(&socket, libc::SO_SNDBUFFORCE, buffer);
        }
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Best effort: needs CAP_NET_ADMIN, silently does nothing without it.
fn force_buffer(socket: &Socket, option: libc::c_int, size: usize) {
    let value: libc::c_int = size.min(i32::MAX as usize) as libc::c_int;
    let _ = set_option(socket, libc::SOL_SOCKET, option, &value);
}

/// `setsockopt(level, name)` with `value`, passed by pointer and size.
#[allow(unsafe_code)]
pub(crate) fn set_option<T>(
    socket: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: setsockopt reads exactly size_of::<T>() bytes from a valid reference to a
    // live T (the kernel copies it during the call), on a descriptor borrowed for the
    // call's duration.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The buffers a socket really got: (receive, send).
pub fn buffer_sizes(socket: &UdpSocket) -> (usize, usize) {
    let s = socket2::SockRef::from(socket);
    (
        s.recv_buffer_size().unwrap_or(0),
        s.send_buffer_size().unwrap_or(0),
    )
}
