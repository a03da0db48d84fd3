//! `cnspr wake PEER`: asks the daemon to have a Wake-on-LAN magic packet sent on the
//! peer's LAN, and says who sent it where.

use crate::api::{Request, WakeResult};
use crate::cli::Global;
use crate::client::Client;
use crate::output::print_json;

pub fn wake(c: &mut Client, g: &Global, peer: String, force: bool) -> anyhow::Result<i32> {
    let v = c.request(&Request::Wake { peer, force })?;
    if g.json {
        print_json(&v)?;
        return Ok(0);
    }
    let w: WakeResult = serde_json::from_value(v)?;
    for s in &w.sent {
        println!(
            "magic packet for {} ({}) sent by {} on {} to {}",
            w.peer,
            s.mac,
            w.by,
            s.interface,
            s.to.join(", ")
        );
    }
    Ok(0)
}
