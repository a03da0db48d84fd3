//! Range-based set reconciliation: the sync fallback for two stores whose version vectors
//! share no history (pure protocol core, no I/O; see `docs/store.md`, "Sync").
//!
//! Every key is one *item*: its position `pos` (the first 8 bytes of SHA-256 of the key)
//! and its *digest* (SHA-256 of the key and of all its current versions, dots and values
//! included). Two stores hold the same item exactly when they hold the same versions of the
//! key. The position space `[0, 2^64)` is a 16-ary tree of ranges: a range at `level` L
//! is fixed by the top 4·L bits of the positions it holds (`prefix`).
//!
//! The *responder* (the side that has data to give) sends, for each range it is asked
//! about, its 16 children: a [`Fp`] (count and hash of the digest sum) for a child holding
//! more than [`LEAF_ITEMS`] items, else the child's item list. The *initiator* compares each
//! child with its own: a child whose fingerprint differs is asked to be split further, an
//! item it does not hold (or holds with another digest) is asked for by position. Each
//! round goes one level deeper, so a session ends within 17 rounds; with `d` differences
//! among `n` items it costs about `d · log16(n / 16)` rounds' worth of 16 fingerprints.
//!
//! Only the initiator learns what *it* lacks: each direction of a connection runs its own
//! session. Fingerprint sums are cheap to keep up to date ([`ItemSet`] implementations
//! cache per-bucket sums), and every message from the other side is validated against
//! what was asked, so a peer cannot make a session loop, grow or go out of range.

use std::collections::{HashSet, VecDeque};

use serde::{Deserialize, Serialize};

/// A child holding at most this many items is sent as its item list.
pub const LEAF_ITEMS: u64 = 16;
/// Deepest level: a range of one position.
pub const MAX_LEVEL: u8 = 16;
/// Most ranges the responder expands in one message (the rest wait for the next round).
pub const MAX_SPLITS_PER_MSG: usize = 256;
/// Children per range.
pub const FANOUT: usize = 16;

/// A range of positions: the ones whose top `4 * level` bits equal `prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Range {
    pub level: u8,
    pub prefix: u64,
}

impl Range {
    /// The whole position space.
    pub const ROOT: Range = Range {
        level: 0,
        prefix: 0,
    };

    /// Whether this is a well-formed range (level in bounds, prefix fits).
    pub fn valid(self) -> bool {
        self.level <= MAX_LEVEL
            && (self.level == MAX_LEVEL || self.prefix >> (4 * u32::from(self.level)) == 0)
    }

    /// First position in the range.
    pub fn lo(self) -> u64 {
        if self.level == 0 {
            0
        } else {
            self.prefix << (64 - 4 * u32::from(self.level))
        }
    }

    /// Last position in the range (inclusive).
    pub fn hi(self) -> u64 {
        if self.level == 0 {
            u64::MAX
        } else if self.level == MAX_LEVEL {
            self.prefix
        } else {
            self.lo() | (u64::MAX >> (4 * u32::from(self.level)))
        }
    }

    /// Whether `pos` lies in the range.
    pub fn contains(self, pos: u64) -> bool {
        (self.lo()..=self.hi()).contains(&pos)
    }

    /// The 16 children (only for `level < MAX_LEVEL`).
    pub fn children(self) -> impl Iterator<Item = Range> {
        let level = self.level + 1;
        (0..FANOUT as u64).map(move |i| Range {
            level,
            prefix: (self.prefix << 4) | i,
        })
    }
}

/// Count of items and the wrapping sum of their digests over a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sum {
    pub count: u64,
    pub sum: u128,
}

impl Sum {
    /// Adds one item's digest.
    pub fn add(&mut self, digest: u128) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(digest);
    }

    /// Adds another sum.
    pub fn merge(&mut self, other: Sum) {
        self.count += other.count;
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// The fingerprint sent on the wire.
    pub fn fp(self) -> Fp {
        let mut input = [0u8; 24];
        input[..8].copy_from_slice(&self.count.to_le_bytes());
        input[8..].copy_from_slice(&self.sum.to_le_bytes());
        let d = ring::digest::digest(&ring::digest::SHA256, &input);
        let mut hash = [0u8; 8];
        hash.copy_from_slice(&d.as_ref()[..8]);
        Fp {
            count: self.count,
            hash,
        }
    }
}

/// A range's fingerprint on the wire: its item count and 8 bytes of hash of its sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fp {
    pub count: u64,
    pub hash: [u8; 8],
}

/// An item on the wire: position and 8 bytes of its digest.
pub type WireItem = (u64, [u8; 8]);

/// Folds a 128-bit digest to the 8 bytes sent on the wire.
pub fn fold(digest: u128) -> [u8; 8] {
    ((digest >> 64) as u64 ^ digest as u64).to_le_bytes()
}

/// What the responder says about one child range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Child {
    /// More than [`LEAF_ITEMS`] items: their fingerprint.
    Fp(Fp),
    /// At most [`LEAF_ITEMS`] items (or a one-position range): the items, by position.
    Items(Vec<WireItem>),
}

/// The 16 children of one range the initiator asked about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub parent: Range,
    pub children: Vec<Child>,
}

/// Responder to initiator: the children of some of the ranges asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconMsg {
    pub splits: Vec<Split>,
}

/// Initiator to responder: ranges to split further and positions whose items it wants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconReply {
    pub split: Vec<Range>,
    pub want: Vec<u64>,
}

/// A set of items that can be summed and listed by range (a store snapshot, or a map in
/// tests).
pub trait ItemSet {
    type Error;
    /// Count and digest sum of the items in `range`.
    fn sum(&self, range: Range) -> Result<Sum, Self::Error>;
    /// The items in `range`, by position, at most `limit` (more are not needed).
    fn items(&self, range: Range, limit: usize) -> Result<Vec<(u64, u128)>, Self::Error>;
}

/// A message from the other side broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconError {
    #[error("reconciliation: {0}")]
    Protocol(String),
}

fn protocol<T>(msg: impl Into<String>) -> Result<T, ReconError> {
    Err(ReconError::Protocol(msg.into()))
}

/// What the responder does next.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// The message to send, if the session goes on.
    pub msg: Option<ReconMsg>,
    /// Positions whose keys (all their current versions) must be sent to the initiator.
    pub send: Vec<u64>,
}

/// The responder's side of one session.
#[derive(Debug, Default)]
pub struct Responder {
    /// Ranges sent as fingerprints in the last message: the only ones it may ask to split.
    asked_fp: HashSet<Range>,
    /// Positions listed in the last message: the only ones it may want.
    listed: HashSet<u64>,
    /// Ranges to expand in later messages.
    queue: VecDeque<Range>,
    rounds: u32,
}

/// Upper bound on rounds: one per level plus the rounds the split queue can add.
fn expand<S: ItemSet>(set: &S, parent: Range) -> Result<(Split, Vec<Range>, Vec<u64>), S::Error> {
    let mut children = Vec::with_capacity(FANOUT);
    let mut fps = Vec::new();
    let mut listed = Vec::new();
    for child in parent.children() {
        let sum = set.sum(child)?;
        if sum.count <= LEAF_ITEMS || child.level == MAX_LEVEL {
            let items = set.items(child, LEAF_ITEMS.max(sum.count) as usize)?;
            listed.extend(items.iter().map(|(p, _)| *p));
            children.push(Child::Items(
                items.into_iter().map(|(p, d)| (p, fold(d))).collect(),
            ));
        } else {
            fps.push(child);
            children.push(Child::Fp(sum.fp()));
        }
    }
    Ok((Split { parent, children }, fps, listed))
}

impl Responder {
    /// Starts a session: the first message covers the children of the whole space.
    pub fn start<S: ItemSet>(set: &S) -> Result<(Responder, ReconMsg), S::Error> {
        let mut r = Responder::default();
        r.queue.push_back(Range::ROOT);
        let msg = r.next_msg(set)?;
        Ok((r, msg))
    }

    fn next_msg<S: ItemSet>(&mut self, set: &S) -> Result<ReconMsg, S::Error> {
        self.asked_fp.clear();
        self.listed.clear();
        self.rounds += 1;
        let mut msg = ReconMsg::default();
        while msg.splits.len() < MAX_SPLITS_PER_MSG {
            let Some(parent) = self.queue.pop_front() else {
                break;
            };
            let (split, fps, listed) = expand(set, parent)?;
            self.asked_fp.extend(fps);
            self.listed.extend(listed);
            msg.splits.push(split);
        }
        Ok(msg)
    }

    /// Number of messages sent so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Handles the initiator's reply to the last message.
    pub fn on_reply<S: ItemSet>(
        &mut self,
        set: &S,
        reply: ReconReply,
    ) -> Result<Result<Step, ReconError>, S::Error> {
        for r in &reply.split {
            if !self.asked_fp.remove(r) {
                return Ok(protocol(format!(
                    "asked to split {r:?}, which was not offered as a fingerprint"
                )));
            }
        }
        let mut send = Vec::with_capacity(reply.want.len());
        for p in reply.want {
            if !self.listed.remove(&p) {
                return Ok(protocol(format!(
                    "wanted position {p:#x}, which was not listed"
                )));
            }
            send.push(p);
        }
        // Every split goes one level deeper, so this ends: at most one round per level plus
        // the rounds a long queue takes.
        self.queue.extend(reply.split);
        let msg = if self.queue.is_empty() {
            self.asked_fp.clear();
            self.listed.clear();
            None
        } else {
            Some(self.next_msg(set)?)
        };
        Ok(Ok(Step { msg, send }))
    }
}

/// The initiator's side of one session: checks each message against what it asked for.
///
/// What it asks for is bounded by the most items the responder can honestly hold
/// (`max_items`): the ranges asked for at once are disjoint and each was offered as a
/// fingerprint, so holds more than [`LEAF_ITEMS`] of the responder's items: at most
/// `max_items / (LEAF_ITEMS + 1)` of them. Over a session, the ranges split at each level
/// are disjoint too, and only levels 1 to `MAX_LEVEL - 1` hold fingerprints: at most
/// `1 + (MAX_LEVEL - 1) · max_items / (LEAF_ITEMS + 1)` ranges are answered. A responder
/// that goes past either bound (made-up fingerprints that keep splitting) breaks the
/// protocol.
#[derive(Debug)]
pub struct Initiator {
    /// Ranges asked for and not answered yet.
    expected: HashSet<Range>,
    /// Most ranges asked for at once.
    max_open: usize,
    /// Ranges answered so far, and the most a session answers.
    answered: u64,
    max_answered: u64,
}

impl Initiator {
    /// A session that expects the children of the whole space first, with a responder
    /// that holds at most `max_items` items.
    pub fn new(max_items: u64) -> Self {
        let open = max_items / (LEAF_ITEMS + 1);
        Self {
            expected: HashSet::from([Range::ROOT]),
            max_open: usize::try_from(open).unwrap_or(usize::MAX),
            answered: 0,
            max_answered: open
                .saturating_mul(u64::from(MAX_LEVEL - 1))
                .saturating_add(1),
        }
    }

    /// Whether every range asked for was answered (the session is over).
    pub fn done(&self) -> bool {
        self.expected.is_empty()
    }

    /// Ranges asked for and not answered yet.
    pub fn open(&self) -> usize {
        self.expected.len()
    }

    /// Compares a responder message with `set` and builds the reply.
    pub fn on_msg<S: ItemSet>(
        &mut self,
        set: &S,
        msg: ReconMsg,
    ) -> Result<Result<ReconReply, ReconError>, S::Error> {
        if msg.splits.is_empty() || msg.splits.len() > MAX_SPLITS_PER_MSG {
            return Ok(protocol(format!(
                "a message with {} ranges (1 to {MAX_SPLITS_PER_MSG} expected)",
                msg.splits.len()
            )));
        }
        self.answered += msg.splits.len() as u64;
        if self.answered > self.max_answered {
            return Ok(protocol(format!(
                "more than {} ranges split in one session",
                self.max_answered
            )));
        }
        let mut reply = ReconReply::default();
        for split in msg.splits {
            if !self.expected.remove(&split.parent) {
                return Ok(protocol(format!(
                    "range {:?} was not asked for",
                    split.parent
                )));
            }
            if split.children.len() != FANOUT {
                return Ok(protocol(format!(
                    "{} children instead of {FANOUT}",
                    split.children.len()
                )));
            }
            for (range, child) in split.parent.children().zip(split.children) {
                match child {
                    Child::Fp(fp) => {
                        if range.level == MAX_LEVEL || fp.count <= LEAF_ITEMS {
                            return Ok(protocol("a fingerprint where items were due"));
                        }
                        if set.sum(range)?.fp() != fp {
                            if self.expected.len() >= self.max_open {
                                return Ok(protocol(format!(
                                    "more than {} ranges to split at once",
                                    self.max_open
                                )));
                            }
                            self.expected.insert(range);
                            reply.split.push(range);
                        }
                    }
                    Child::Items(items) => {
                        let max = if range.level == MAX_LEVEL {
                            usize::MAX
                        } else {
                            LEAF_ITEMS as usize
                        };
                        if items.len() > max {
                            return Ok(protocol("more items than a leaf holds"));
                        }
                        if !items.iter().all(|(p, _)| range.contains(*p))
                            || !items.windows(2).all(|w| w[0] <= w[1])
                        {
                            return Ok(protocol("items out of range or out of order"));
                        }
                        // One look-up per position, however many items the list
                        // gives it: a one-position range may list any number.
                        for same in items.chunk_by(|a, b| a.0 == b.0) {
                            let pos = same[0].0;
                            if reply.want.last() == Some(&pos) {
                                continue;
                            }
                            let at = Range {
                                level: MAX_LEVEL,
                                prefix: pos,
                            };
                            let held: HashSet<[u8; 8]> = set
                                .items(at, usize::MAX)?
                                .into_iter()
                                .map(|(_, d)| fold(d))
                                .collect();
                            if same.iter().any(|(_, d)| !held.contains(d)) {
                                reply.want.push(pos);
                            }
                        }
                    }
                }
            }
        }
        Ok(Ok(reply))
    }
}

/// An in-memory [`ItemSet`] (tests and benchmarks): position -> digests (a position may
/// hold several keys).
#[derive(Clone, Debug, Default)]
pub struct MemSet(pub std::collections::BTreeMap<(u64, u128), ()>);

impl MemSet {
    pub fn insert(&mut self, pos: u64, digest: u128) {
        self.0.insert((pos, digest), ());
    }
}

impl ItemSet for MemSet {
    type Error = std::convert::Infallible;
    fn sum(&self, range: Range) -> Result<Sum, Self::Error> {
        let mut s = Sum::default();
        for ((_, d), _) in self.0.range((range.lo(), 0)..=(range.hi(), u128::MAX)) {
            s.add(*d);
        }
        Ok(s)
    }
    fn items(&self, range: Range, limit: usize) -> Result<Vec<(u64, u128)>, Self::Error> {
        Ok(self
            .0
            .range((range.lo(), 0)..=(range.hi(), u128::MAX))
            .take(limit)
            .map(|((p, d), _)| (*p, *d))
            .collect())
    }
}

#[cfg(test)]
mod tests;
