//! I/O helpers of the sync tasks: frame reader tasks and store reads off the runtime.

use std::sync::Arc;

use tokio::io::AsyncRead;
use tokio::sync::{mpsc, Semaphore};
use transport::frame::read_frame;
use transport::quinn::RecvStream;

use super::error::SyncError;

/// Decoded frames a pull session's reader keeps ready for it. The server's frames are up
/// to 32 MiB (`MAX_DOWN`): with this one and the one the session works on, a pull session
/// holds at most two decoded frames (64 MiB) whatever the server sends, and the next is
/// read while the session works.
pub const DOWN_QUEUE: usize = 1;
/// The same for a served session's reader (the puller's frames are at most 4 MiB).
pub const UP_QUEUE: usize = 8;

/// Reads frames into a queue of `queue` (so sessions can wait on frames and other events
/// without losing half-read frames). A frame is read only when the queue has room for
/// it: no decoded frame waits outside the queue.
pub fn reader<T>(recv: RecvStream, max: usize, queue: usize) -> mpsc::Receiver<Result<T, SyncError>>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::channel(queue);
    tokio::spawn(pump(recv, max, tx, |recv: &mut RecvStream, code: u32| {
        let _ = recv.stop(code.into());
    }));
    rx
}

/// The reader task: frames from `recv` into `tx`; `stop` tells the stream why reading
/// stopped (0: the session ended, 1: the stream ended or sent a bad frame).
async fn pump<T, R>(
    mut recv: R,
    max: usize,
    tx: mpsc::Sender<Result<T, SyncError>>,
    stop: fn(&mut R, u32),
) where
    T: serde::de::DeserializeOwned,
    R: AsyncRead + Unpin,
{
    loop {
        // Room first: the session ended, or took a frame.
        let Ok(room) = tx.reserve().await else {
            return stop(&mut recv, 0);
        };
        let frame = tokio::select! {
            f = read_frame::<T, _>(&mut recv, max) => f,
            // The session ended: stop reading (the frame in progress is not needed).
            _ = tx.closed() => return stop(&mut recv, 0),
        };
        let item = match frame {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(SyncError::Closed),
            Err(e) => Err(e.into()),
        };
        let end = item.is_err();
        room.send(item);
        if end {
            return stop(&mut recv, 1);
        }
    }
}

/// The next frame from a reader.
pub async fn next<T>(rx: &mut mpsc::Receiver<Result<T, SyncError>>) -> Result<T, SyncError> {
    rx.recv().await.unwrap_or(Err(SyncError::Closed))
}

/// Runs blocking store work (reads, and the pure session steps that read a snapshot) off
/// the runtime's threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SyncError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// Like [`blocking`], once `reads` gives a permit, which the work holds until it really
/// ends: a session that is cancelled (a new one from the same peer replaces it) stops
/// waiting for its read, but the read runs on, and the peer's next read waits for it.
/// So a peer that opens session after session has at most as many reads running as
/// `reads` has permits.
pub async fn blocking_held<T: Send + 'static>(
    reads: &Arc<Semaphore>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SyncError> {
    let permit = reads
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| SyncError::Closed)?;
    blocking(move || {
        let _held = permit;
        f()
    })
    .await
}

/// Longest a reconciliation waits on its peer (a frame from it, or room to write to it)
/// while it holds a snapshot of the store: an open read transaction keeps the pages
/// freed after it from being used again, so a peer that stops answering would make the
/// store file grow with every later write.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// `step`, or [`SyncError::Stalled`] if it takes longer than [`STALL`].
pub async fn within<T>(
    step: impl std::future::Future<Output = Result<T, SyncError>>,
) -> Result<T, SyncError> {
    within_for(STALL, step).await
}

async fn within_for<T>(
    limit: std::time::Duration,
    step: impl std::future::Future<Output = Result<T, SyncError>>,
) -> Result<T, SyncError> {
    tokio::time::timeout(limit, step)
        .await
        .unwrap_or(Err(SyncError::Stalled(limit)))
}

/// Sleeps until `at`, or forever.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    /// A stream of the same frame without end that counts the bytes read from it.
    struct Frames {
        frame: Vec<u8>,
        at: usize,
        read: Arc<AtomicUsize>,
    }

    impl AsyncRead for Frames {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let at = self.at;
            let n = buf.remaining().min(self.frame.len() - at);
            buf.put_slice(&self.frame[at..at + n]);
            self.at = (at + n) % self.frame.len();
            self.read.fetch_add(n, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
    }

    async fn settle() {
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_pull_session_s_reader_holds_one_frame_ahead_of_it() {
        let frame = transport::frame::encode(&vec![7u8; 4096], 1 << 20).unwrap();
        let read = Arc::new(AtomicUsize::new(0));
        let source = Frames {
            frame: frame.clone(),
            at: 0,
            read: read.clone(),
        };
        let (tx, mut rx) = mpsc::channel(DOWN_QUEUE);
        tokio::spawn(pump::<Vec<u8>, _>(
            source,
            1 << 20,
            tx,
            |_: &mut Frames, _: u32| {},
        ));
        // The session does not take frames: one is read and waits, no more.
        settle().await;
        assert_eq!(read.load(Ordering::SeqCst), frame.len());
        // It takes one (and holds it): the next is read, no more.
        let held = next(&mut rx).await.unwrap();
        assert_eq!(held, vec![7u8; 4096]);
        settle().await;
        assert_eq!(read.load(Ordering::SeqCst), 2 * frame.len());
    }

    #[tokio::test]
    async fn a_peer_that_stops_answering_ends_the_step() {
        let (tx, mut rx) = mpsc::channel::<Result<u8, SyncError>>(1);
        let limit = std::time::Duration::from_millis(50);
        // Nothing comes (the sender is kept, so the queue is not closed).
        let r = within_for(limit, next(&mut rx)).await;
        assert!(
            matches!(r, Err(SyncError::Stalled(d)) if d == limit),
            "{r:?}"
        );
        // An answer in time goes through.
        tx.send(Ok(7)).await.unwrap();
        assert_eq!(within_for(limit, next(&mut rx)).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_cancelled_read_keeps_its_permit_until_it_ends() {
        let reads = Arc::new(Semaphore::new(1));
        let (started, is_started) = tokio::sync::oneshot::channel();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let session = tokio::spawn({
            let reads = reads.clone();
            async move {
                blocking_held(&reads, move || {
                    let _ = started.send(());
                    let _ = wait.recv();
                })
                .await
            }
        });
        is_started.await.unwrap();
        // The session is cancelled while its read runs (as when the peer opens another).
        session.abort();
        assert!(session.await.unwrap_err().is_cancelled());
        // The read still runs: the peer's next one waits for it.
        assert!(reads.clone().try_acquire_owned().is_err());
        go.send(()).unwrap();
        let next = blocking_held(&reads, || 7).await.unwrap();
        assert_eq!(next, 7);
    }
}
