//! I/O helpers of the sync tasks: frame reader tasks and store reads off the runtime.

use tokio::sync::mpsc;
use transport::frame::read_frame;
use transport::quinn::RecvStream;

use super::error::SyncError;

/// Queued frames between a stream's reader task and its session.
const QUEUE: usize = 8;

/// Reads frames into a bounded queue (so sessions can wait on frames and other events
/// without losing half-read frames).
pub fn reader<T>(mut recv: RecvStream, max: usize) -> mpsc::Receiver<Result<T, SyncError>>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                f = read_frame::<T, _>(&mut recv, max) => f,
                // The session ended: stop reading (the frame in progress is not needed).
                _ = tx.closed() => {
                    let _ = recv.stop(0u32.into());
                    return;
                }
            };
            let item = match frame {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err(SyncError::Closed),
                Err(e) => Err(e.into()),
            };
            let end = item.is_err();
            if tx.send(item).await.is_err() || end {
                if end {
                    let _ = recv.stop(1u32.into());
                }
                return;
            }
        }
    });
    rx
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

/// Sleeps until `at`, or forever.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
