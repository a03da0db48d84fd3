//! The tombstone collector and the retirement of origins, run from the members' reports
//! kept in [`SyncState`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::error::SyncError;
use super::state::SyncState;
use crate::daemon::context::Daemon;
use crate::daemon::peers::PeerState;
use crate::store::{Device, VersionVector};

/// How often collection runs at most, and at least.
const COLLECT_MIN: Duration = Duration::from_secs(2);
const COLLECT_MAX: Duration = Duration::from_secs(60);

/// Collects tombstones every member has seen and retires origins every member has.
/// Members are the trusted peers that are not removed, plus this device. A tombstone goes
/// only when every member's last reported vector covers it and this device has everything
/// those vectors cover (so no member holds a concurrent write this device has not seen);
/// see `docs/store.md`.
pub async fn collector(d: Arc<Daemon>, st: Arc<SyncState>) {
    // A timerfd (one wake-up at the deadline, see transport::runtime).
    let mut alarm = transport::runtime::Alarm::new(Instant::now() + COLLECT_MAX);
    let mut last = None;
    loop {
        alarm.reset(Instant::now() + COLLECT_MAX);
        tokio::select! {
            _ = st.reported() => {}
            _ = alarm.wait() => {}
        }
        if let Err(e) = collect_once(&d, &st, &mut last).await {
            last = None;
            warn!(error = %e, "tombstone collection failed");
        }
        tokio::time::sleep(COLLECT_MIN).await;
    }
}

/// What a collection that changed nothing saw: the store's commit count and the members'
/// vectors. With both the same, the next one would find nothing either.
type Unchanged = Option<(u64, Vec<VersionVector>)>;

async fn collect_once(
    d: &Arc<Daemon>,
    st: &SyncState,
    last: &mut Unchanged,
) -> Result<(), SyncError> {
    let members: Vec<Device> = d
        .peers()
        .peers
        .values()
        .filter(|p| p.state != PeerState::Removed)
        .map(|p| p.id.0)
        .collect();
    let plan = st.plan(&members);
    if !plan.persist.is_empty() {
        d.store.save_member_vvs(plan.persist).await?;
    }
    let Some(vvs) = plan.members else {
        debug!("tombstone collection waits for a member's first report");
        return Ok(());
    };
    // Nothing was committed and no member reported anything new since a collection that
    // changed nothing: skip it (an idle daemon runs none of the store's code).
    let commits = d.store.commit_count();
    if last
        .as_ref()
        .is_some_and(|(c, v)| *c == commits && *v == vvs)
    {
        return Ok(());
    }
    *last = None;
    let retired = d.store.retire_origins(&vvs).await?;
    if retired > 0 {
        info!(origins = retired, "retired origins every member has");
    }
    let mut covered = true;
    for vv in &vvs {
        covered = covered && d.store.covers(vv)?;
    }
    if covered {
        let n = d.store.collect_tombstones(&vvs).await?;
        if n > 0 {
            info!(keys = n, "collected tombstones every member has seen");
        }
    } else {
        debug!("tombstone collection waits to catch up with the members");
    }
    // Kept only if no commit at all came in between (this one's or anyone's).
    if d.store.commit_count() == commits {
        *last = Some((commits, vvs));
    }
    Ok(())
}
