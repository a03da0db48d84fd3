//! Timers and limits of the membership core.

use std::time::Duration;

/// Timers and limits. `Default` is the LAN preset: a crash is seen everywhere between
/// `unreachable_after - probe_interval` and `unreachable_after` (1.1 to 1.65 s), while a
/// member that stalls for up to about 1 s is never declared `unreachable`
/// (`unreachable_after` > stall + `probe_interval`, heartbeats dated when they arrive).
/// Every member beats only its `monitors`, so the idle traffic per member is
/// `monitors / probe_interval` whatever the size of the mesh (5.5 per second: under 6
/// with room for what else a device sends while idle, mDNS and ARP).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Beat period: a member sends a `Beat` to each of its monitors each interval (over
    /// QUIC, one side of a monitoring link beats and the other answers only at the
    /// transport level); a watched link that is not active gets a `Ping` each interval.
    pub probe_interval: Duration,
    /// Minimum time a `Ping` may stay unanswered before the link turns `suspect` (the
    /// per-link timeout adapts upwards to the observed answer delay of a slow peer).
    pub probe_timeout: Duration,
    /// Upper bound of the adaptive per-link probe timeout.
    pub probe_timeout_max: Duration,
    /// A link silent this long is dead; the peer is then `indirect` if a path through
    /// other members exists, `unreachable` otherwise. This is the suspicion deadline.
    pub unreachable_after: Duration,
    /// Indirect probes (`PingReq`) sent per suspected link and probe interval.
    pub indirect_fanout: usize,
    /// Monitors per member (and monitoring rings): each member beats this many others,
    /// which watch it and report its failure. A mesh of at most `monitors + 1` members
    /// has everyone watch everyone.
    pub monitors: usize,
    /// Beats due within `1 - ping_skip_fraction` of an interval from a wake-up go out
    /// with it, so the beats of several links share one wake-up.
    pub ping_skip_fraction: f32,
    /// One digest to one neighbour (round robin) per interval repairs missed gossip.
    pub anti_entropy_interval: Duration,
    /// Broadcast events of others are taken, delivered and passed on. A host that never
    /// uses broadcasts turns this off: events members send are then dropped on arrival
    /// (neither kept nor passed on), so no member can make the others carry its payloads.
    pub events: bool,
    /// Broadcast events are kept this long (and at most `event_buffer_max`) for repair.
    pub event_retain: Duration,
    pub event_buffer_max: usize,
    /// Seen broadcast ids kept per origin above its watermark.
    pub seen_window: usize,
    /// A wake-up later than planned by more than this is our own stall (local health):
    /// the lag is not counted as silence of the peers.
    pub local_lag_tolerance: Duration,
    /// An RTT change smaller than this (and than a quarter of the old value) is not
    /// re-announced in the link record.
    pub rtt_change_min: Duration,
    /// Our link record is re-published at most this often (link changes in between are
    /// coalesced); leave and refutation go out at once.
    pub record_min_interval: Duration,
    /// Extra cost per relay hop when choosing routes, so near-equal paths prefer fewer hops.
    pub hop_penalty: Duration,
    /// Gentle members (a device on battery, `Membership::set_gentle`): one monitor, one
    /// beat per `gentle_interval` (which is also its own wake-up period), never a
    /// monitor of others while a member that is not gentle can be.
    pub gentle_interval: Duration,
    /// Silence of a gentle member after which its monitor suspects it (and pings it).
    pub gentle_suspect_after: Duration,
    /// Silence of a gentle member after which its monitor reports it lost.
    pub gentle_unreachable_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            probe_interval: Duration::from_millis(550),
            probe_timeout: Duration::from_millis(200),
            probe_timeout_max: Duration::from_millis(700),
            unreachable_after: Duration::from_millis(1650),
            indirect_fanout: 3,
            monitors: 3,
            ping_skip_fraction: 0.75,
            anti_entropy_interval: Duration::from_secs(1),
            events: true,
            event_retain: Duration::from_secs(10),
            event_buffer_max: 1024,
            seen_window: 1024,
            local_lag_tolerance: Duration::from_millis(100),
            rtt_change_min: Duration::from_millis(2),
            record_min_interval: Duration::from_millis(50),
            hop_penalty: Duration::from_micros(200),
            gentle_interval: Duration::from_secs(20),
            gentle_suspect_after: Duration::from_secs(45),
            gentle_unreachable_after: Duration::from_secs(55),
        }
    }
}

impl Config {
    /// The LAN preset (same as `Default`).
    pub fn lan() -> Self {
        Self::default()
    }

    /// A WAN preset: slower probes, 5 s detection, for members behind long or lossy paths.
    pub fn wan() -> Self {
        Config {
            probe_interval: Duration::from_millis(1000),
            probe_timeout: Duration::from_millis(600),
            probe_timeout_max: Duration::from_millis(2000),
            unreachable_after: Duration::from_secs(5),
            anti_entropy_interval: Duration::from_secs(2),
            rtt_change_min: Duration::from_millis(10),
            ..Self::default()
        }
    }

    /// Checks the relations between the timers; call once at load.
    pub fn validate(&self) -> Result<(), String> {
        if self.probe_interval < Duration::from_millis(10) {
            return Err("membership.probe_interval must be at least 10 ms".into());
        }
        if self.probe_timeout.is_zero() || self.probe_timeout > self.probe_timeout_max {
            return Err("membership.probe_timeout must be > 0 and <= probe_timeout_max".into());
        }
        if self.unreachable_after <= self.probe_interval + self.probe_timeout_max
            || self.unreachable_after <= self.probe_interval * 2 + self.probe_timeout
        {
            return Err(
                "membership.unreachable_after must exceed probe_interval + probe_timeout_max \
                 and 2 x probe_interval + probe_timeout"
                    .into(),
            );
        }
        if self.indirect_fanout == 0 || self.indirect_fanout > 16 {
            return Err("membership.indirect_fanout must be between 1 and 16".into());
        }
        if self.monitors == 0 || self.monitors > 16 {
            return Err("membership.monitors must be between 1 and 16".into());
        }
        if !(0.1..=1.0).contains(&self.ping_skip_fraction) {
            return Err("membership.ping_skip_fraction must be between 0.1 and 1.0".into());
        }
        if self.anti_entropy_interval < self.probe_interval {
            return Err("membership.anti_entropy_interval must be >= probe_interval".into());
        }
        if self.event_buffer_max == 0 || self.event_buffer_max > crate::message::MAX_LIST {
            return Err(format!(
                "membership.event_buffer_max must be between 1 and {}",
                crate::message::MAX_LIST
            ));
        }
        if self.record_min_interval >= self.probe_interval {
            return Err("membership.record_min_interval must be below probe_interval".into());
        }
        if self.gentle_interval < self.probe_interval
            || self.gentle_suspect_after <= self.gentle_interval * 2
            || self.gentle_unreachable_after <= self.gentle_suspect_after
        {
            return Err("membership: gentle_interval must be >= probe_interval, \
                 gentle_suspect_after > 2 x gentle_interval, \
                 gentle_unreachable_after > gentle_suspect_after"
                .into());
        }
        if self.seen_window == 0 {
            return Err("membership.seen_window must be > 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate() {
        Config::default().validate().unwrap();
        Config::wan().validate().unwrap();
        let bad = Config {
            unreachable_after: Duration::from_millis(500),
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }
}
