//! The store's mark file (`<store file>.mark`): this store's epoch and the highest number
//! it gave its own writes, rewritten after each commit that wrote something of its own.
//!
//! It lives beside the store file, not in it, so that a store file put back from an older
//! copy (a backup) meets a mark that went further: the store then moves to a new epoch
//! before it writes anything, and its next writes cannot reuse numbers the other devices
//! may already hold (see `docs/store.md`). The mark is written without fsync: after a
//! crash it may lag behind the store, which can only hide an older copy, never invent one.

use std::path::{Path, PathBuf};

const HEADER: &str = "cnspr-store-mark 1";

/// This store's own origin as of the last commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub epoch: u64,
    pub seq: u64,
}

pub(crate) fn path_for(store: &Path) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(".mark");
    PathBuf::from(p)
}

/// Longest mark file read: a real one is under 60 bytes.
const MAX_BYTES: u64 = 256;

/// The mark at `path`; `None` when missing, too long or not a mark (it is then rewritten).
pub(crate) fn read(path: &Path) -> Option<Mark> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .ok()?;
    if text.len() as u64 > MAX_BYTES {
        return None;
    }
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut f = lines.next()?.split(' ');
    let epoch = u64::from_str_radix(f.next()?, 16).ok()?;
    let seq = f.next()?.parse().ok()?;
    (f.next().is_none() && lines.next().is_none()).then_some(Mark { epoch, seq })
}

/// Replaces the mark (write beside it, then rename). Best effort: a failure is logged.
pub(crate) fn write(path: &Path, mark: Mark) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let text = format!("{HEADER}\n{:016x} {}\n", mark.epoch, mark.seq);
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::warn!(file = %path.display(), error = %e, "could not write the store's mark file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = path_for(&dir.path().join("s.redb"));
        assert_eq!(p.file_name().unwrap(), "s.redb.mark");
        assert_eq!(read(&p), None);
        let m = Mark {
            epoch: 0xdead_beef_0000_0001,
            seq: 42,
        };
        write(&p, m);
        assert_eq!(read(&p), Some(m));
        for bad in [
            "",
            "cnspr-store-mark 1\n",
            "x\n1 2\n",
            "cnspr-store-mark 1\nzz 2\n",
            "cnspr-store-mark 1\n1 2 3\n",
        ] {
            std::fs::write(&p, bad).unwrap();
            assert_eq!(read(&p), None, "{bad:?}");
        }
        // A huge file is not read whole.
        let mut long = format!("{HEADER}\n1 2\n");
        long.push_str(&"x".repeat(1 << 20));
        std::fs::write(&p, long).unwrap();
        assert_eq!(read(&p), None);
    }
}
