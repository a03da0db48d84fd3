//! quinn on tokio, with timers that wake the process only when something is due.
//!
//! An idle daemon is woken mostly by timers, and on small machines each wake-up costs
//! tens of microseconds whatever it does. tokio's timer wheel adds wake-ups of its own:
//! a deadline more than 64 ms away sits in a coarser level of the wheel and the runtime
//! wakes at that level's slot boundary to move it down; and `Sleep::reset` to a later
//! deadline leaves the entry at the old one, so the runtime wakes then, finds nothing
//! due and files it again. quinn moves each connection's timer at nearly every packet
//! (idle and keep-alive deadlines follow the packets received), so an idle mesh paid
//! several empty wake-ups per second per connection.
//!
//! [`Timer`] is a Linux `timerfd` registered with tokio's I/O driver: the kernel wakes
//! the process at the deadline itself, once. [`QuietRuntime`] gives quinn these timers;
//! the daemon uses them through [`Alarm`] for its own periodic work.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use quinn::{AsyncTimer, AsyncUdpSocket, Runtime};
use tokio::io::unix::AsyncFd;

/// A deadline moved later by less than this keeps the kernel timer as it is (one early
/// wake-up at most, then it is set again): under load quinn moves its timer forward by
/// microseconds thousands of times a second.
const LAZY: Duration = Duration::from_millis(2);

/// [`quinn::TokioRuntime`] with [`Timer`]s.
#[derive(Debug)]
pub struct QuietRuntime;

impl Runtime for QuietRuntime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        match Timer::new(at) {
            Ok(t) => Box::pin(t),
            // No timerfd (out of descriptors): tokio's own timer still works.
            Err(_) => quinn::TokioRuntime.new_timer(at),
        }
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(future);
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(sock)
    }

    fn now(&self) -> Instant {
        quinn::TokioRuntime.now()
    }
}

/// A movable deadline for the daemon's own periodic work: a [`Timer`], or tokio's own
/// timer if no timerfd can be had.
pub struct Alarm(Pin<Box<dyn AsyncTimer>>);

impl Alarm {
    pub fn new(at: Instant) -> Alarm {
        Alarm(QuietRuntime.new_timer(at))
    }

    /// Moves the deadline (earlier or later).
    pub fn reset(&mut self, at: Instant) {
        self.0.as_mut().reset(at)
    }

    /// Waits until the deadline has passed (at once if it has).
    pub async fn wait(&mut self) {
        std::future::poll_fn(|cx| self.0.as_mut().poll(cx)).await
    }
}

/// A one-shot timer on a `timerfd`; [`Timer::reset`] moves it. Must be created inside a
/// tokio runtime with I/O enabled.
#[derive(Debug)]
pub struct Timer {
    fd: AsyncFd<OwnedFd>,
    /// The deadline asked for.
    at: Instant,
    /// When the kernel timer will expire, if it is set (may be earlier than `at`, see
    /// [`LAZY`]); `None` once its expiry has been read.
    armed: Option<Instant>,
}

impl Timer {
    pub fn new(at: Instant) -> io::Result<Timer> {
        // SAFETY: plain system call; the descriptor is owned below.
        #[allow(unsafe_code)]
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        #[allow(unsafe_code)]
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the AsyncFd owns the descriptor, so it stays open while registered.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
        let mut t = Timer {
            fd,
            at,
            armed: None,
        };
        t.arm(at)?;
        Ok(t)
    }

    /// Moves the deadline (earlier or later).
    pub fn reset(&mut self, at: Instant) {
        self.at = at;
        let keep = self.armed.is_some_and(|a| a <= at && at < a + LAZY);
        if !keep {
            // Cannot fail with a valid descriptor and time; if it did, the timer would
            // fire at its old time (or never, for a timer already read) and the owner's
            // next reset sets it again.
            let _ = self.arm(at);
        }
    }

    fn arm(&mut self, at: Instant) -> io::Result<()> {
        // A zero value would disarm the timer: a deadline already past fires in 1 ns.
        let d = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: valid descriptor, valid pointers to initialised structs.
        #[allow(unsafe_code)]
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed = Some(at);
        Ok(())
    }

    /// Ready once the deadline has passed.
    pub fn poll_expired(&mut self, cx: &mut Context) -> Poll<()> {
        loop {
            if Instant::now() >= self.at {
                return Poll::Ready(());
            }
            let Ok(mut guard) = ready!(self.fd.poll_read_ready(cx)) else {
                // The reactor is gone (runtime shutting down): nothing will be due.
                return Poll::Pending;
            };
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into `buf`.
            #[allow(unsafe_code)]
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            if n < 0 {
                guard.clear_ready();
                continue;
            }
            self.armed = None;
            if Instant::now() < self.at {
                // Fired at an earlier armed time (see `LAZY`): set it to the real one.
                let _ = self.arm(self.at);
            }
        }
    }
}

impl AsyncTimer for Timer {
    fn reset(self: Pin<&mut Self>, at: Instant) {
        Timer::reset(self.get_mut(), at)
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context) -> Poll<()> {
        self.get_mut().poll_expired(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait(t: &mut Timer) {
        std::future::poll_fn(|cx| t.poll_expired(cx)).await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fires_at_the_deadline_after_moves_both_ways() {
        let start = Instant::now();
        let mut t = Timer::new(start + Duration::from_secs(30)).unwrap();
        // Later by less than LAZY, then much later, then earlier: the last one counts.
        t.reset(start + Duration::from_secs(30) + Duration::from_millis(1));
        t.reset(start + Duration::from_secs(60));
        t.reset(start + Duration::from_millis(40));
        tokio::time::timeout(Duration::from_secs(10), wait(&mut t))
            .await
            .expect("timer fired");
        assert!(Instant::now() >= start + Duration::from_millis(40));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_early_kernel_expiry_does_not_end_the_wait() {
        let start = Instant::now();
        let mut t = Timer::new(start + Duration::from_millis(20)).unwrap();
        // Moved later by less than LAZY: the kernel fires at 20 ms, the wait goes on.
        t.reset(start + Duration::from_millis(21));
        wait(&mut t).await;
        assert!(Instant::now() >= start + Duration::from_millis(21));
        // A deadline in the past is ready at once, again and again.
        t.reset(start);
        wait(&mut t).await;
        wait(&mut t).await;
    }
}
