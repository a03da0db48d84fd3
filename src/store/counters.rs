//! Counters (`kv incr`): a replicated counter whose increments on devices that were
//! apart all add up once they meet.
//!
//! A counter `KEY` is one ordinary key per device that counted,
//! `.cnspr/counter/KEY/DEVICE-ID`, holding that device's own running total as decimal
//! text. Only the device itself writes its part, so its writes are ordered by its own
//! clock and the newest always wins; a counter's value is the sum of the parts, and
//! replication of ordinary keys is all it needs (a per-device state counter, which is
//! what a PN-counter is, with one signed total per device instead of two halves). A part
//! written by another device than the one it names is not counted.

use super::{Condition, Device, Store, StoreError};

/// Keys under this prefix belong to the daemon (counters); `kv put` and `kv del` refuse
/// them and `kv list` hides them unless asked for them.
pub const RESERVED: &str = ".cnspr/";
const PREFIX: &str = ".cnspr/counter/";
/// Attempts of one increment against concurrent increments on this device.
const ATTEMPTS: usize = 64;

/// Why an increment failed.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the counter would overflow (a part stays within ±2^63)")]
    Overflow,
    #[error("this device's part of the counter is not a number: {0:?}")]
    Corrupt(String),
    #[error("too many increments at once on this counter; try again")]
    Busy,
}

/// The key of `device`'s part of counter `key`.
pub fn part_key(key: &str, device: &Device) -> String {
    format!("{PREFIX}{key}/{}", transport::DeviceId(*device))
}

fn parts_prefix(key: &str) -> String {
    format!("{PREFIX}{key}/")
}

fn parse(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

impl Store {
    /// The parts of counter `key` (device, its total), empty when nobody counted.
    pub fn counter_parts(&self, key: &str) -> Result<Vec<(Device, i64)>, StoreError> {
        let prefix = parts_prefix(key);
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list(&prefix, after.as_deref(), 1000)?;
            let full = page.len() == 1000;
            for e in &page {
                let named = e
                    .key
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.parse::<transport::DeviceId>().ok());
                match (named, parse(&e.value)) {
                    (Some(dev), Some(n)) if dev.0 == e.version.origin.device => {
                        out.push((dev.0, n))
                    }
                    _ => {}
                }
            }
            match (full, page.last()) {
                (true, Some(last)) => after = Some(last.key.clone()),
                _ => return Ok(out),
            }
        }
    }

    /// Adds `by` to this device's part of counter `key` (durably); returns the parts.
    pub async fn incr(&self, key: &str, by: i64) -> Result<Vec<(Device, i64)>, CounterError> {
        let part = part_key(key, &self.origin().device);
        for _ in 0..ATTEMPTS {
            let (current, cond) = match self.get(&part)? {
                Some(e) => (
                    parse(&e.value).ok_or_else(|| {
                        CounterError::Corrupt(String::from_utf8_lossy(&e.value).into_owned())
                    })?,
                    Condition::IfVersion {
                        device: e.version.origin.device,
                        seq: e.version.seq,
                        hlc: e.version.hlc,
                    },
                ),
                None => (0, Condition::IfAbsent),
            };
            let next = current.checked_add(by).ok_or(CounterError::Overflow)?;
            match self
                .put_if(&part, next.to_string().into_bytes(), Some(cond))
                .await
            {
                Ok(_) => return Ok(self.counter_parts(key)?),
                // Another increment of this counter on this device came first: again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CounterError::Busy)
    }
}
