//! The mesh's relays (`cnspr relay add`): signed entries that every member keeps
//! (`STATE_DIR/relays.json`, mode 0600: it holds the relays' secrets) and gossips beside
//! the roster, so that pairing at home is enough for a device to use them later.
//!
//! An entry says "the relay at ADDR, with this secret and mesh tag, is ours" (or, with
//! `removed`, that it no longer is), signed by the member that recorded it. Per address
//! the entry with the highest `(version, signer)` wins, whatever the order gossip brings
//! them in; removals stay as entries so that an old addition cannot come back.
//!
//! A member's relay frames are merged a few at once, then one per [`RELAYS_INTERVAL`]
//! (its later frame, a superset of its earlier ones, waits its turn): every change makes
//! each member save the book and pass it on, and a relay with a new secret costs a key
//! derivation (`transport::relay::keys`, bounded there too).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use transport::identity::{ed25519_id, verify_signature};
use transport::relay::link::RelaySpec;
use transport::relay::{check_secret, TAG_LEN};
use transport::{DeviceId, Identity};

use super::roster_gossip::Gate;

/// File of the relay entries inside the state directory.
pub const RELAYS_FILE: &str = "relays.json";
/// Most entries (relays and removed relays) kept. Past it, a new entry takes the place
/// of the oldest removed relay, if one is older; otherwise it is ignored.
pub const MAX_ENTRIES: usize = 64;
/// Most relays in use that one device signs: a member cannot make every device dial more
/// addresses of its choosing than this, nor fill the book with them.
pub const MAX_PER_SIGNER: usize = 8;
/// Most characters of a relay address (`HOST:PORT`).
pub const MAX_ADDR: usize = 255;

/// Relay frames of one member merged at once (a connection's greeting, a change), then
/// one per [`RELAYS_INTERVAL`].
pub const RELAYS_BURST: u32 = 4;
pub const RELAYS_INTERVAL: Duration = Duration::from_secs(5);

const DOMAIN: &[u8] = b"cnspr relay entry v1\0";

/// "The relay at `addr` is ours" (or, `removed`, no longer), signed by `signer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayEntry {
    pub addr: String,
    pub secret: String,
    pub tag: Vec<u8>,
    pub removed: bool,
    /// Milliseconds since the Unix epoch when signed.
    pub version: u64,
    pub signer: [u8; 32],
    pub sig: Vec<u8>,
}

fn message(addr: &str, secret: &str, tag: &[u8], removed: bool, version: u64) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    for part in [addr.as_bytes(), secret.as_bytes(), tag] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m.push(u8::from(removed));
    m.extend_from_slice(&version.to_be_bytes());
    m
}

/// Why `addr` is not a relay address: `HOST:PORT` with a port that is not 0.
pub fn check_addr(addr: &str) -> Result<(), String> {
    if addr.is_empty()
        || addr.len() > MAX_ADDR
        || addr.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("{addr:?} is not a relay address (HOST:PORT)"));
    }
    let port = addr
        .rsplit_once(':')
        .and_then(|(host, p)| (!host.is_empty()).then_some(p))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0);
    match port {
        Some(_) => Ok(()),
        None => Err(format!(
            "{addr:?} is not a relay address: HOST:PORT with a port from 1 to 65535"
        )),
    }
}

impl RelayEntry {
    pub fn sign(
        me: &Identity,
        addr: &str,
        secret: &str,
        tag: &[u8],
        removed: bool,
        version: u64,
    ) -> Self {
        RelayEntry {
            addr: addr.to_string(),
            secret: secret.to_string(),
            tag: tag.to_vec(),
            removed,
            version,
            signer: me.public_key(),
            sig: me.sign(&message(addr, secret, tag, removed, version)),
        }
    }

    pub fn signer_id(&self) -> DeviceId {
        ed25519_id(&self.signer)
    }

    /// Signature, address, secret and tag are valid (not whether the signer is trusted).
    pub fn well_formed(&self) -> bool {
        check_addr(&self.addr).is_ok()
            && (self.removed || check_secret(&self.secret).is_ok())
            && self.tag.len() == TAG_LEN
            && verify_signature(
                &self.signer,
                &message(
                    &self.addr,
                    &self.secret,
                    &self.tag,
                    self.removed,
                    self.version,
                ),
                &self.sig,
            )
    }

    fn rank(&self) -> (u64, [u8; 32]) {
        (self.version, self.signer)
    }

    pub fn spec(&self) -> Option<RelaySpec> {
        if self.removed {
            return None;
        }
        Some(RelaySpec {
            addr: self.addr.clone(),
            secret: self.secret.clone(),
            tag: self.tag.as_slice().try_into().ok()?,
        })
    }
}

/// How far in the future an entry's version may be: a member cannot sign one that no
/// later change could ever beat.
const MAX_AHEAD_MS: u64 = 24 * 3600 * 1000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Merges `incoming` into `into` (by address, highest rank wins); entries must be well
/// formed, dated no later than a day ahead, and signed by a device `trusted` accepts.
/// True when something changed.
pub fn merge(
    into: &mut BTreeMap<String, RelayEntry>,
    incoming: Vec<RelayEntry>,
    trusted: impl Fn(&DeviceId) -> bool,
) -> bool {
    let mut changed = false;
    let latest = now_ms().saturating_add(MAX_AHEAD_MS);
    for e in incoming.into_iter().take(MAX_ENTRIES) {
        if e.version > latest || !e.well_formed() || !trusted(&e.signer_id()) {
            continue;
        }
        if let Ok(evict) = room(into, &e) {
            if let Some(addr) = evict {
                into.remove(&addr);
            }
            into.insert(e.addr.clone(), e);
            changed = true;
        }
    }
    changed
}

/// Why an entry is not taken (see [`room`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoom {
    /// What is held for its address ranks as high.
    Older,
    /// Its signer already signs [`MAX_PER_SIGNER`] relays in use.
    Signer,
    /// The book holds [`MAX_ENTRIES`] and no removed relay older than it.
    Full,
}

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoRoom::Older => f.write_str("a newer entry for that relay is held"),
            NoRoom::Signer => write!(
                f,
                "this device already signs {MAX_PER_SIGNER} relays in use: remove one first"
            ),
            NoRoom::Full => write!(
                f,
                "the mesh's relay list is full ({MAX_ENTRIES} relays and removed relays)"
            ),
        }
    }
}

/// Whether `into` has room for `e`, and the removed relay that must give way for it.
/// The order is total (the newest removals stay), so every device settles on the same
/// entries and gossip does not go back and forth.
pub fn room(into: &BTreeMap<String, RelayEntry>, e: &RelayEntry) -> Result<Option<String>, NoRoom> {
    match into.get(&e.addr) {
        Some(old) if old.rank() >= e.rank() => return Err(NoRoom::Older),
        Some(_) => return Ok(None),
        None => {}
    }
    let signer = e.signer;
    if !e.removed
        && into
            .values()
            .filter(|o| !o.removed && o.signer == signer)
            .count()
            >= MAX_PER_SIGNER
    {
        return Err(NoRoom::Signer);
    }
    if into.len() < MAX_ENTRIES {
        return Ok(None);
    }
    let oldest = (into.values().filter(|o| o.removed)).min_by_key(|o| (o.rank(), &o.addr));
    match oldest {
        Some(o) if (o.rank(), &o.addr) < (e.rank(), &e.addr) => Ok(Some(o.addr.clone())),
        _ => Err(NoRoom::Full),
    }
}

/// This device's relay entries, persisted; and the gate of the members' relay frames.
pub struct RelayBook {
    entries: Mutex<BTreeMap<String, RelayEntry>>,
    path: PathBuf,
    gate: Gate<Vec<RelayEntry>>,
}

impl std::fmt::Debug for RelayBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBook")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RelayBook {
    /// Loads `STATE_DIR/relays.json` (missing: none). Entries are checked again; a
    /// corrupt file is an error.
    pub fn load(state_dir: &Path, trusted: impl Fn(&DeviceId) -> bool) -> anyhow::Result<Self> {
        let path = state_dir.join(RELAYS_FILE);
        let mut entries = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let list: Vec<RelayEntry> = serde_json::from_str(&text).map_err(|e| {
                    anyhow::anyhow!(
                        "{} is corrupt ({e}); remove it (the relays are then learnt again from the other members)",
                        path.display()
                    )
                })?;
                merge(&mut entries, list, trusted);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        }
        Ok(RelayBook {
            entries: Mutex::new(entries),
            path,
            gate: Gate::new(RELAYS_BURST, RELAYS_INTERVAL),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RelayEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every entry (to gossip).
    pub fn entries(&self) -> Vec<RelayEntry> {
        self.lock().values().cloned().collect()
    }

    /// The relays in use.
    pub fn specs(&self) -> Vec<RelaySpec> {
        self.lock().values().filter_map(RelayEntry::spec).collect()
    }

    /// Merges and, when something changed, saves; true then.
    pub fn merge(&self, incoming: Vec<RelayEntry>, trusted: impl Fn(&DeviceId) -> bool) -> bool {
        let mut entries = self.lock();
        let changed = merge(&mut entries, incoming, trusted);
        if changed {
            if let Err(e) = save(&self.path, &entries) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot save the relays");
            }
        }
        changed
    }

    /// The gate of the members' relay frames: a few merged at once, then one per
    /// interval, the latest frame of each member waiting for its turn.
    pub fn gate(&self) -> &Gate<Vec<RelayEntry>> {
        &self.gate
    }

    /// Whether the book has room for `e` (see [`room`]).
    pub fn room_for(&self, e: &RelayEntry) -> Result<(), NoRoom> {
        room(&self.lock(), e).map(|_| ())
    }

    /// The current entry of `addr`, if any (removed or not).
    pub fn get(&self, addr: &str) -> Option<RelayEntry> {
        self.lock().get(addr).cloned()
    }
}

fn save(path: &Path, entries: &BTreeMap<String, RelayEntry>) -> std::io::Result<()> {
    let list: Vec<&RelayEntry> = entries.values().collect();
    let json = serde_json::to_vec(&list).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::roster_gossip::Admit;
    use std::time::Instant;

    fn entry(me: &Identity, addr: &str, removed: bool, version: u64) -> RelayEntry {
        RelayEntry::sign(me, addr, "0123456789abcdef", &[1u8; 16], removed, version)
    }

    #[test]
    fn merging_is_order_independent_and_removals_stick() {
        let a = Identity::generate("a").unwrap();
        let add = entry(&a, "relay.example:7447", false, 1);
        let del = entry(&a, "relay.example:7447", true, 2);
        let trusted = |_: &DeviceId| true;
        let mut x = BTreeMap::new();
        assert!(merge(&mut x, vec![add.clone(), del.clone()], trusted));
        let mut y = BTreeMap::new();
        merge(&mut y, vec![del.clone()], trusted);
        assert!(
            !merge(&mut y, vec![add.clone()], trusted),
            "an old addition came back"
        );
        assert_eq!(x, y);
        assert!(x["relay.example:7447"].spec().is_none());
    }

    #[test]
    fn forged_untrusted_or_malformed_entries_are_ignored() {
        let a = Identity::generate("a").unwrap();
        let mut forged = entry(&a, "relay.example:7447", false, 1);
        forged.secret = "another-secret-of-ours".into();
        let mut m = BTreeMap::new();
        assert!(!merge(&mut m, vec![forged], |_| true));
        assert!(!merge(
            &mut m,
            vec![entry(&a, "relay.example:7447", false, 1)],
            |_| false
        ));
        assert!(!merge(&mut m, vec![entry(&a, "no-port", false, 1)], |_| {
            true
        }));
        assert!(!merge(&mut m, vec![entry(&a, "host:0", false, 1)], |_| {
            true
        }));
        // An entry dated far ahead, that no later change could beat.
        let ahead = entry(&a, "relay.example:7447", false, u64::MAX);
        assert!(!merge(&mut m, vec![ahead], |_| true));
        assert!(m.is_empty());
        assert!(check_addr("[2001:db8::1]:7447").is_ok());
        assert!(check_addr("relay example:1").is_err());
    }

    /// A member that signs many relays gets 8 in use; it cannot fill the book, and the
    /// person's own relays still find room.
    #[test]
    fn a_member_signs_few_relays_in_use_and_leaves_room_for_the_others() {
        let (thief, me) = (
            Identity::generate("t").unwrap(),
            Identity::generate("m").unwrap(),
        );
        let trusted = |_: &DeviceId| true;
        let mut book = BTreeMap::new();
        let flood: Vec<RelayEntry> = (0..MAX_ENTRIES as u64)
            .map(|i| entry(&thief, &format!("relay{i}.example:7447"), false, i + 1))
            .collect();
        assert!(merge(&mut book, flood, trusted));
        assert_eq!(
            book.len(),
            MAX_PER_SIGNER,
            "a member signs at most 8 relays in use"
        );
        // Its 9th is refused; replacing one of its own is not.
        let ninth = entry(&thief, "relay100.example:7447", false, 200);
        assert_eq!(room(&book, &ninth), Err(NoRoom::Signer));
        assert!(merge(
            &mut book,
            vec![entry(&thief, "relay0.example:7447", true, 300)],
            trusted
        ));
        assert!(merge(&mut book, vec![ninth], trusted));
        let mine = entry(&me, "home.example:7447", false, 400);
        assert_eq!(room(&book, &mine), Ok(None));
        assert!(merge(&mut book, vec![mine], trusted));
    }

    /// Removed relays fill the book: the oldest gives way to a newer entry, an older one
    /// finds no room (so two devices settle on the same entries), and the refusal says why.
    #[test]
    fn a_full_book_keeps_the_newest_removals() {
        let (thief, me) = (
            Identity::generate("t").unwrap(),
            Identity::generate("m").unwrap(),
        );
        let trusted = |_: &DeviceId| true;
        let mut book = BTreeMap::new();
        let removals: Vec<RelayEntry> = (0..MAX_ENTRIES as u64)
            .map(|i| entry(&thief, &format!("gone{i}.example:7447"), true, 100 + i))
            .collect();
        assert!(merge(&mut book, removals, trusted));
        assert_eq!(book.len(), MAX_ENTRIES);
        let mine = entry(&me, "home.example:7447", false, 1000);
        assert_eq!(room(&book, &mine), Ok(Some("gone0.example:7447".into())));
        assert!(merge(&mut book, vec![mine], trusted));
        assert_eq!(book.len(), MAX_ENTRIES);
        assert!(book.contains_key("home.example:7447"));
        assert!(!book.contains_key("gone0.example:7447"));
        // The removal that gave way comes back from a device that still has it: no room.
        let old = entry(&thief, "gone0.example:7447", true, 100);
        assert_eq!(room(&book, &old), Err(NoRoom::Full));
        assert!(
            !merge(&mut book, vec![old], trusted),
            "gossip would go back and forth"
        );
        // Full of relays in use (8 signers of 8): a new one is refused, and told why.
        let mut full = BTreeMap::new();
        for s in 0..MAX_ENTRIES / MAX_PER_SIGNER {
            let signer = Identity::generate("s").unwrap();
            let entries: Vec<RelayEntry> = (0..MAX_PER_SIGNER)
                .map(|i| entry(&signer, &format!("r{s}-{i}.example:7447"), false, 5))
                .collect();
            merge(&mut full, entries, trusted);
        }
        assert_eq!(full.len(), MAX_ENTRIES);
        let why = room(&full, &entry(&me, "home.example:7447", false, 9)).unwrap_err();
        assert!(why.to_string().contains("full"), "{why}");
    }

    #[test]
    fn the_book_is_saved_private_and_loaded_again() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::generate("a").unwrap();
        let book = RelayBook::load(dir.path(), |_| true).unwrap();
        assert!(book.merge(vec![entry(&a, "203.0.113.5:7447", false, 1)], |_| true));
        let mode = std::fs::metadata(dir.path().join(RELAYS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = RelayBook::load(dir.path(), |_| true).unwrap();
        assert_eq!(again.specs().len(), 1);
        std::fs::write(dir.path().join(RELAYS_FILE), b"{").unwrap();
        assert!(RelayBook::load(dir.path(), |_| true).is_err());
    }

    #[tokio::test]
    async fn a_flood_of_relay_frames_costs_a_few_key_derivations() {
        use std::sync::Arc;
        use transport::{Endpoint, EndpointConfig, Roster};
        let dir = tempfile::tempdir().unwrap();
        let me = Arc::new(Identity::generate("me").unwrap());
        let member = Identity::generate("m").unwrap();
        let trusted = |s: &DeviceId| *s == member.id;
        let book = RelayBook::load(dir.path(), trusted).unwrap();
        let endpoint = Endpoint::bind(me, Roster::new(), EndpointConfig::for_test()).unwrap();
        let keys = endpoint.relays().keys.clone();
        let secret = |i: u64| format!("flood-secret-{i:04}-of-a-stolen-member");
        // What the daemon does with a relay frame of `member` (`MeshFrame::Relays`),
        // all at one instant: 100 frames, each one changing the secret of a relay.
        let t0 = Instant::now();
        let mut merged = 0;
        for i in 1..=100u64 {
            let e = RelayEntry::sign(&member, "127.0.0.1:9", &secret(i), &[7; 16], false, i);
            if let Admit::Now(entries) = book.gate().admit(member.id, vec![e], t0) {
                assert!(book.merge(entries, trusted));
                endpoint.set_relays(&book.specs());
                merged += 1;
            }
        }
        assert_eq!(merged, RELAYS_BURST);
        // The member's latest frame, when its turn comes: the change is not lost.
        let later = t0 + RELAYS_INTERVAL;
        let last = book
            .gate()
            .take_pending(&member.id, later)
            .expect("the latest frame");
        assert!(book.gate().take_pending(&member.id, later).is_none());
        assert!(book.merge(last, trusted));
        endpoint.set_relays(&book.specs());
        assert_eq!(book.specs()[0].secret, secret(100));
        // The relay of the latest secret gets its key: the link goes on to the relay.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while keys.cached(&secret(100)).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the latest key never came"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let derived = keys.derived();
        assert!(
            (1..=u64::from(RELAYS_BURST) + 1).contains(&derived),
            "{derived} key derivations for 100 relay frames"
        );
    }
}
