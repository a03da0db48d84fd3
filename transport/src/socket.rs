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
#[allow(unsafe_code)]
fn force_buffer(socket: &Socket, option: libc::c_int, size: usize) {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = size.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt reads exactly size_of::<c_int>() bytes from a valid pointer to a
    // live c_int, on a file descriptor this function borrows for the call's duration.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
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
