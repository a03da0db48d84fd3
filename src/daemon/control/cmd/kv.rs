//! The `kv.*` socket commands over this device's store (docs/store.md). The store is
//! local and durable; `sync` replicates it to the other devices, and what arrives from them
//! shows here like local writes (a watcher sees remote changes, `kv.get` with
//! `all_versions` lists the concurrent versions other devices wrote).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::super::framing::{err, line_of};
use crate::api::{code, ErrorBody, Reply};
use crate::daemon::context::Daemon;
use crate::store::counters::{CounterError, RESERVED};
use crate::store::{
    BatchRange, Change, Condition, Device, Entry, FeedEvent, Hlc, StoreError, Version,
};

/// Most keys one `kv.list` answers.
const MAX_LIST: usize = 10_000;

/// Bytes of keys and values after which a `kv.list` page ends (`more` then says to ask
/// again): the page's reply, values in base64, stays far below the clients' line limit
/// (`client::DEFAULT_MAX_REPLY`, 64 MiB) even when it holds many 8 MiB values.
const LIST_BYTES: usize = 16 * 1024 * 1024;

pub(super) fn store_err(e: StoreError) -> ErrorBody {
    if let StoreError::Conflict { current, key, .. } = &e {
        let mut body = err(code::CONFLICT, e.to_string());
        body.key = Some(key.clone());
        body.current = Some(
            current
                .iter()
                .map(|(hlc, seq, device)| {
                    let origin = transport::DeviceId(*device).to_string();
                    json!({
                        "hlc": hlc.to_string(),
                        "origin": origin,
                        "seq": seq,
                        "version": version_str(hlc, *seq, &origin),
                    })
                })
                .collect(),
        );
        return body;
    }
    let c = match e {
        StoreError::EmptyKey | StoreError::KeyTooLong { .. } | StoreError::InvalidKey { .. } => {
            code::BAD_REQUEST
        }
        StoreError::BadBatch(_) => code::BAD_REQUEST,
        StoreError::ValueTooLarge { .. } | StoreError::BatchTooLarge { .. } => code::TOO_LARGE,
        _ => code::STORE,
    };
    err(c, e.to_string())
}

fn origin_id(v: &Version) -> String {
    transport::DeviceId(v.origin.device).to_string()
}

/// The one-string form of a version (`version` in replies, `if_version` in requests):
/// `HLC:SEQ:ORIGIN`.
fn version_string(v: &Version) -> String {
    version_str(&v.hlc, v.seq, &origin_id(v))
}

fn version_str(hlc: &Hlc, seq: u64, origin: &str) -> String {
    format!("{hlc}:{seq}:{origin}")
}

/// A write's condition from a request's `if_version` / `if_absent`.
pub fn condition(
    if_version: Option<String>,
    if_absent: bool,
) -> Result<Option<Condition>, ErrorBody> {
    match (if_version, if_absent) {
        (Some(_), true) => Err(err(
            code::BAD_REQUEST,
            "give if_version or if_absent, not both",
        )),
        (None, true) => Ok(Some(Condition::IfAbsent)),
        (None, false) => Ok(None),
        (Some(s), false) => {
            let bad = |why: &str| {
                err(
                    code::BAD_REQUEST,
                    format!(
                        "if_version {s:?}: {why}; give the `version` string a read returned \
                         (HLC:SEQ:ORIGIN)"
                    ),
                )
            };
            if s.len() > 256 {
                return Err(bad("too long"));
            }
            let mut parts = s.splitn(3, ':');
            let (Some(hlc), Some(seq), Some(origin)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("three parts expected"));
            };
            let hlc: Hlc = hlc.parse().map_err(|e: String| bad(&e))?;
            let seq: u64 = seq
                .parse()
                .map_err(|_| bad("the sequence number is not a number"))?;
            let device = origin
                .parse::<transport::DeviceId>()
                .map_err(|e| bad(&e.to_string()))?;
            Ok(Some(Condition::IfVersion {
                device: device.0,
                seq,
                hlc,
            }))
        }
    }
}

fn version_json(key: &str, value: Option<&[u8]>, v: &Version) -> Value {
    json!({
        "key": key,
        "value_b64": value.map(|b| data_encoding::BASE64.encode(b)),
        "deleted": value.is_none(),
        "hlc": v.hlc.to_string(),
        "origin": origin_id(v),
        "seq": v.seq,
        "version": version_string(v),
    })
}

fn entry_json(e: &Entry, all: bool) -> Value {
    let mut v = version_json(&e.key, Some(&e.value), &e.version);
    if all {
        v["siblings"] = e
            .siblings
            .iter()
            .map(|(ver, val)| version_json(&e.key, val.as_deref(), ver))
            .collect();
    }
    v
}

/// Refuses keys of the daemon's own (counters' parts).
pub(super) fn user_key(key: &str) -> Result<(), ErrorBody> {
    if key.starts_with(RESERVED) {
        return Err(err(
            code::BAD_REQUEST,
            format!("keys under {RESERVED} belong to the daemon (counters: use kv incr)"),
        ));
    }
    Ok(())
}

/// A counter's reply: its value (the sum), as text in `value_b64` too, and the parts.
fn counter_json(key: &str, parts: &[(Device, i64)]) -> Value {
    let total: i128 = parts.iter().map(|(_, n)| i128::from(*n)).sum();
    let text = total.to_string();
    json!({
        "key": key,
        "counter": true,
        "value": text,
        "value_b64": data_encoding::BASE64.encode(text.as_bytes()),
        "deleted": false,
        "parts": parts
            .iter()
            .map(|(dev, n)| (transport::DeviceId(*dev).to_string(), json!(n)))
            .collect::<serde_json::Map<String, Value>>(),
    })
}

pub async fn incr(d: &Arc<Daemon>, key: &str, by: i64) -> Result<Value, ErrorBody> {
    user_key(key)?;
    crate::store::validate_key(key).map_err(store_err)?;
    crate::store::validate_key(&crate::store::counters::part_key(key, &d.id().0))
        .map_err(|e| err(code::BAD_REQUEST, format!("counter key too long: {e}")))?;
    if d.store.get(key).map_err(store_err)?.is_some() {
        return Err(err(
            code::BAD_REQUEST,
            format!("{key:?} holds a value, not a counter"),
        ));
    }
    match d.store.incr(key, by).await {
        Ok(parts) => Ok(counter_json(key, &parts)),
        Err(CounterError::Store(e)) => Err(store_err(e)),
        Err(e @ CounterError::Overflow) => Err(err(code::BAD_REQUEST, e.to_string())),
        Err(e) => Err(err(code::STORE, e.to_string())),
    }
}

pub async fn put(
    d: &Arc<Daemon>,
    key: &str,
    value: Bytes,
    cond: Option<Condition>,
) -> Result<Value, ErrorBody> {
    user_key(key)?;
    let change = d
        .store
        .put_if(key, value.to_vec(), cond)
        .await
        .map_err(store_err)?;
    Ok(written_json(&change))
}

/// What a write made, as `kv.put` and `kv.batch` answer it: the key and the version
/// written, and `deleted: true` for a delete.
pub(super) fn written_json(c: &Change) -> Value {
    let v = &c.version;
    let mut out = json!({
        "key": c.key,
        "hlc": v.hlc.to_string(),
        "origin": origin_id(v),
        "seq": v.seq,
        "version": version_string(v),
    });
    if c.value.is_none() {
        out["deleted"] = json!(true);
    }
    out
}

pub fn get(d: &Arc<Daemon>, key: &str, all: bool) -> Result<Value, ErrorBody> {
    match d.store.get(key).map_err(store_err)? {
        Some(e) => Ok(entry_json(&e, all)),
        None => {
            let parts = d.store.counter_parts(key).map_err(store_err)?;
            if parts.is_empty() {
                Err(err(code::NOT_FOUND, format!("no key {key:?}")))
            } else {
                Ok(counter_json(key, &parts))
            }
        }
    }
}

pub async fn del(d: &Arc<Daemon>, key: &str, cond: Option<Condition>) -> Result<Value, ErrorBody> {
    user_key(key)?;
    match d.store.del_if(key, cond).await.map_err(store_err)? {
        Some(c) => Ok(json!({
            "key": key,
            "deleted": true,
            "hlc": c.version.hlc.to_string(),
            "version": version_string(&c.version),
        })),
        None => Err(err(code::NOT_FOUND, format!("no key {key:?}"))),
    }
}

pub fn list(
    d: &Arc<Daemon>,
    prefix: &str,
    after: Option<String>,
    limit: Option<usize>,
) -> Result<Value, ErrorBody> {
    let limit = limit.unwrap_or(1000).clamp(1, MAX_LIST);
    // The daemon's own keys (counters' parts) only when the prefix asks for them.
    let hide = !prefix.starts_with(RESERVED);
    let mut entries = Vec::new();
    let mut after = after;
    // Bytes of the entries kept: a page never ends empty with `more`.
    let mut bytes = 0;
    let size = |e: &Entry| e.key.len() + e.value.len();
    let more = loop {
        let budget = LIST_BYTES - bytes;
        let page = d
            .store
            .list_within(prefix, after.as_deref(), limit, budget)
            .map_err(store_err)?;
        // Full: cut at `limit` or at the byte budget, so there may be more after it.
        let full = page.len() == limit || page.iter().map(size).sum::<usize>() >= budget;
        after = page.last().map(|e| e.key.clone());
        for e in page {
            if !(hide && e.key.starts_with(RESERVED)) {
                bytes += size(&e);
                entries.push(e);
            }
        }
        if entries.len() >= limit || bytes >= LIST_BYTES || !full {
            entries.truncate(limit);
            break full || entries.len() == limit;
        }
    };
    Ok(json!({
        "entries": entries.iter().map(|e| entry_json(e, false)).collect::<Vec<_>>(),
        "more": more,
    }))
}

/// A batch's name in replies and watch events, the same on every device:
/// `ORIGIN/EPOCH/FIRST-LAST` (the writing device, its store incarnation in hex, and the
/// batch's first and last write of it).
pub(super) fn batch_id(r: &BatchRange) -> String {
    format!(
        "{}/{:x}/{}-{}",
        transport::DeviceId(r.origin.device),
        r.origin.epoch,
        r.first,
        r.last
    )
}

fn feed_line(f: &FeedEvent) -> Vec<u8> {
    let c = &f.change;
    let mut v = version_json(&c.key, c.value.as_deref(), &c.version);
    v["event"] = json!("kv");
    v["feed_seq"] = json!(f.feed_seq);
    v["wins"] = json!(f.wins);
    if let Some(b) = &f.batch {
        v["batch"] = json!(batch_id(&b.range));
        v["batch_end"] = json!(b.end);
    }
    line_of(&v)
}

/// Holds a batch's changes back until the batch ends, so that a watcher gets them
/// together, the last one under its prefix marked as the end (also when the batch's own
/// last change is under another prefix).
#[derive(Default)]
struct Held {
    range: Option<BatchRange>,
    events: Vec<FeedEvent>,
}

impl Held {
    /// The changes to send now, given the next change of the feed (in feed order) and
    /// whether it is under the watched prefix.
    fn next(&mut self, f: &FeedEvent, under: bool) -> Vec<FeedEvent> {
        let mut out = Vec::new();
        let range = f.batch.map(|b| b.range);
        if self.range.is_some() && self.range != range {
            out.extend(self.flush());
        }
        match f.batch {
            Some(mark) => {
                self.range = Some(mark.range);
                if under {
                    self.events.push(f.clone());
                }
                if mark.end || self.events.len() >= crate::store::MAX_BATCH_OPS {
                    out.extend(self.flush());
                }
            }
            None if under => out.push(f.clone()),
            None => {}
        }
        out
    }

    fn flush(&mut self) -> Vec<FeedEvent> {
        self.range = None;
        let mut events = std::mem::take(&mut self.events);
        let n = events.len();
        for (i, e) in events.iter_mut().enumerate() {
            if let Some(b) = e.batch.as_mut() {
                b.end = i + 1 == n;
            }
        }
        events
    }
}

/// Sends every change under `prefix` after `last` from the durable feed, page by page to
/// its end, advancing `last`; false when the watcher is gone or the feed failed (the
/// watcher was told).
async fn catch_up(
    d: &Arc<Daemon>,
    prefix: &str,
    last: &mut u64,
    held: &mut Held,
    tx: &mpsc::Sender<Vec<u8>>,
) -> bool {
    loop {
        let page = match d.store.feed_since(*last, prefix, 1000) {
            Ok(p) => p,
            Err(e) => {
                let _ = tx
                    .send(line_of(
                        &json!({"event": "error", "message": e.to_string()}),
                    ))
                    .await;
                return false;
            }
        };
        if page.is_empty() {
            return true;
        }
        for f in &page {
            *last = f.feed_seq;
            for e in held.next(f, f.change.key.starts_with(prefix)) {
                if tx.send(feed_line(&e)).await.is_err() {
                    return false;
                }
            }
        }
    }
}

pub async fn watch<R>(
    d: &Arc<Daemon>,
    id: Value,
    prefix: String,
    from_seq: Option<u64>,
    mut r: R,
    tx: mpsc::Sender<Vec<u8>>,
) where
    R: AsyncBufRead + Unpin,
{
    // Subscribe first, then catch up: nothing falls between the two.
    let mut live = d.store.subscribe();
    if tx
        .send(line_of(&Reply::ok(id, json!({"watching": prefix}))))
        .await
        .is_err()
    {
        return;
    }
    let mut last = from_seq.unwrap_or(0);
    let mut held = Held::default();
    if !catch_up(d, &prefix, &mut last, &mut held, &tx).await {
        return;
    }
    let mut scratch = [0u8; 1024];
    loop {
        tokio::select! {
            ev = live.recv() => match ev {
                Ok(f) => {
                    if f.feed_seq <= last {
                        continue;
                    }
                    last = f.feed_seq;
                    for e in held.next(&f, f.change.key.starts_with(&prefix)) {
                        if tx.send(feed_line(&e)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Catch up from the durable feed, to its end, instead of losing
                    // changes; the live events it already covered are skipped above.
                    if !catch_up(d, &prefix, &mut last, &mut held, &tx).await {
                        return;
                    }
                }
                Err(_) => return,
            },
            n = r.read(&mut scratch) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Held;
    use crate::store::{BatchMark, BatchRange, Change, FeedEvent, Hlc, Origin, Version};

    fn ev(seq: u64, key: &str, batch: Option<(u64, bool)>) -> FeedEvent {
        let origin = Origin::new([1; 32], 7);
        FeedEvent {
            feed_seq: seq,
            change: Change {
                key: key.into(),
                value: Some(vec![]),
                version: Version {
                    hlc: Hlc::new(1, 0),
                    origin,
                    seq,
                },
                supersedes: vec![],
            },
            wins: true,
            batch: batch.map(|(first, end)| BatchMark {
                range: BatchRange {
                    origin,
                    first,
                    last: first + 2,
                },
                end,
            }),
        }
    }

    /// A watcher of `a/` gets a batch's changes under `a/` together, the last of them
    /// marked as the end, though the batch's own last change is under `b/`.
    #[test]
    fn a_batch_reaches_a_watcher_together_with_its_end_under_the_prefix() {
        let mut held = Held::default();
        let feed = [
            ev(1, "a/solo", None),
            ev(2, "a/x", Some((2, false))),
            ev(3, "a/y", Some((2, false))),
            ev(4, "b/z", Some((2, true))),
            ev(5, "b/other", None),
            ev(6, "a/next", Some((6, true))),
        ];
        let mut sent = Vec::new();
        for f in &feed {
            let out = held.next(f, f.change.key.starts_with("a/"));
            sent.push(
                out.iter()
                    .map(|e| (e.feed_seq, e.batch.map(|b| b.end)))
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(
            sent,
            vec![
                vec![(1, None)],
                vec![],
                vec![],
                vec![(2, Some(false)), (3, Some(true))],
                vec![],
                vec![(6, Some(true))],
            ]
        );
    }
}
