//! Migration of store files written before origins had epochs (format 1).
//!
//! Format 1 keyed everything by the device alone. Its data becomes epoch 0 of the same
//! device, which also stays this store's own epoch (the file is the same incarnation), so
//! a device that upgrades keeps numbering its writes where it left off and its peers'
//! vectors keep matching after they upgrade too. The whole migration is one write
//! transaction: a crash in the middle leaves the format 1 file as it was.

use std::collections::BTreeMap;

use redb::{AccessGuard, Database, ReadableTable, TableDefinition};
use serde::Deserialize;

use super::error::StoreError;
use super::hlc::Hlc;
use super::model::{Change, Device, FeedEvent, Origin, Sibling, Version, VersionVector};
use super::schema::{
    decode, encode, BUCKETS, FEED, FORMAT, ITEMS, LOG, MEMBERS, META, M_EPOCH, M_FORMAT, M_INDEXED,
    TOMBS, VERSIONS, VV,
};

const V1_VV: TableDefinition<Device, u64> = TableDefinition::new("version_vector");
const V1_LOG: TableDefinition<(Device, u64), &str> = TableDefinition::new("origin_log");

#[derive(Deserialize)]
struct V1Version {
    hlc: Hlc,
    origin: Device,
    seq: u64,
}

#[derive(Deserialize)]
struct V1Sibling {
    version: V1Version,
    value: Option<Vec<u8>>,
    supersedes: Vec<(Device, u64)>,
}

#[derive(Deserialize)]
struct V1Change {
    key: String,
    value: Option<Vec<u8>>,
    version: V1Version,
    supersedes: Vec<(Device, u64)>,
}

#[derive(Deserialize)]
struct V1FeedEvent {
    feed_seq: u64,
    change: V1Change,
    wins: bool,
}

fn origin(device: Device) -> Origin {
    Origin::new(device, 0)
}

fn version(v: V1Version) -> Version {
    Version {
        hlc: v.hlc,
        origin: origin(v.origin),
        seq: v.seq,
    }
}

fn context(ctx: Vec<(Device, u64)>) -> Vec<(Origin, u64)> {
    // Device order is origin order with one epoch: the list stays sorted.
    ctx.into_iter().map(|(d, s)| (origin(d), s)).collect()
}

/// Every row of `table`, turned into owned values by `f` (read before the table is
/// rewritten).
fn rows<K: redb::Key + 'static, V: redb::Value + 'static, T>(
    table: &impl ReadableTable<K, V>,
    f: impl Fn(AccessGuard<'_, K>, AccessGuard<'_, V>) -> T,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        out.push(f(k, v));
    }
    Ok(out)
}

/// Rewrites a format 1 store as the current format in one transaction.
pub(crate) fn from_format_1(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        // Version vector and origin log: re-keyed with epoch 0.
        let old_vv = rows(&txn.open_table(V1_VV)?, |k, v| (k.value(), v.value()))?;
        let old_log = rows(&txn.open_table(V1_LOG)?, |k, v| {
            (k.value(), v.value().to_owned())
        })?;
        txn.delete_table(V1_VV)?;
        txn.delete_table(V1_LOG)?;
        let mut vv = txn.open_table(VV)?;
        for (device, seq) in old_vv {
            vv.insert(origin(device).to_key(), seq)?;
        }
        let mut log = txn.open_table(LOG)?;
        for ((device, seq), key) in old_log {
            log.insert((origin(device).to_key(), seq), key.as_str())?;
        }

        // Values that embed versions: re-encoded one row at a time.
        let mut versions = txn.open_table(VERSIONS)?;
        let keys = rows(&versions, |k, _| k.value().to_owned())?;
        for key in keys {
            let old: Vec<V1Sibling> = match versions.get(key.as_str())? {
                Some(bytes) => decode(bytes.value())?,
                None => continue,
            };
            let new: Vec<Sibling> = old
                .into_iter()
                .map(|s| Sibling {
                    version: version(s.version),
                    value: s.value,
                    supersedes: context(s.supersedes),
                })
                .collect();
            versions.insert(key.as_str(), encode(&new)?.as_slice())?;
        }
        let mut feed = txn.open_table(FEED)?;
        let seqs = rows(&feed, |k, _| k.value())?;
        for seq in seqs {
            let old: V1FeedEvent = match feed.get(seq)? {
                Some(bytes) => decode(bytes.value())?,
                None => continue,
            };
            let event = FeedEvent {
                batch: None,
                feed_seq: old.feed_seq,
                change: Change {
                    key: old.change.key,
                    value: old.change.value,
                    version: version(old.change.version),
                    supersedes: context(old.change.supersedes),
                },
                wins: old.wins,
            };
            feed.insert(seq, encode(&event)?.as_slice())?;
        }
        let mut members = txn.open_table(MEMBERS)?;
        let devices = rows(&members, |k, _| k.value())?;
        for device in devices {
            let old: BTreeMap<Device, u64> = match members.get(device)? {
                Some(bytes) => decode(bytes.value())?,
                None => continue,
            };
            let new: VersionVector = old.into_iter().map(|(d, s)| (origin(d), s)).collect();
            members.insert(device, encode(&new)?.as_slice())?;
        }

        // The item digests cover the encoded versions: rebuilt by `build_indexes`.
        txn.delete_table(ITEMS)?;
        txn.delete_table(BUCKETS)?;
        txn.delete_table(TOMBS)?;
        txn.open_table(ITEMS)?;
        txn.open_table(BUCKETS)?;
        txn.open_table(TOMBS)?;
        let mut meta = txn.open_table(META)?;
        meta.insert(M_INDEXED, 0)?;
        meta.insert(M_EPOCH, 0)?;
        meta.insert(M_FORMAT, FORMAT)?;
    }
    txn.commit()?;
    tracing::info!("store file migrated from format 1 to format {FORMAT}");
    Ok(())
}
