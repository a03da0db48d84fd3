//! Counters (`cnspr kv incr`): increments on devices that were apart all add up once they
//! meet; concurrent increments on one device are none lost; the parts are shown.

mod common;

use common::*;

/// The counter's value on `n` (`None` while it has none).
fn value(n: &Node, key: &str) -> Option<i64> {
    let out = n.cli(&["kv", "get", key]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .flatten()
}

#[test]
fn increments_on_one_device_add_up_and_bad_input_is_refused() {
    let mut n = Node::new("solo", "");
    n.start();
    let out = n.cli(&["kv", "incr", "visits"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    // Concurrent increments from several clients on this one device: none is lost.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let mut c = n.command();
            c.args(["kv", "incr", "visits", "5"]);
            c.spawn().unwrap()
        })
        .collect();
    for mut h in handles {
        assert!(h.wait().unwrap().success());
    }
    let out = n.cli(&["kv", "incr", "visits", "-3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(value(&n, "visits"), Some(1 + 8 * 5 - 3));
    let j = n.json(&["kv", "get", "visits"]);
    assert_eq!(j["counter"], true, "{j}");
    assert_eq!(j["parts"][n.id.as_str()], 38, "{j}");
    // A key holding a value is not a counter; the daemon's own keys are not writable;
    // counters' parts stay out of listings.
    assert!(n.cli(&["kv", "put", "plain", "x"]).status.success());
    let out = n.cli(&["kv", "incr", "plain"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a counter"), "{}", stderr(&out));
    let out = n.cli(&["kv", "put", ".cnspr/counter/visits/x", "9"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("belong to the daemon"),
        "{}",
        stderr(&out)
    );
    let out = n.cli(&["kv", "incr", "visits", "9223372036854775807"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("overflow"), "{}", stderr(&out));
    let list = n.json(&["kv", "list"]);
    let keys: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(keys, ["plain"], "{list}");
    let parts = n.json(&["kv", "list", ".cnspr/counter/"]);
    assert_eq!(parts.as_array().unwrap().len(), 1, "{parts}");
}

/// Three devices, each cut off from the others, count concurrently; once the network
/// heals, every device shows the exact sum, and each device's part.
#[test]
fn counts_on_three_devices_apart_add_up_once_they_meet() {
    let Some(lab) = common::lab::Lab::new("kn", 3) else {
        return;
    };
    let mut nodes = vec![lab.node(0, "a"), lab.node(1, "b"), lab.node(2, "c")];
    for n in nodes.iter_mut() {
        n.start();
    }
    lab.trust_all(&nodes);
    for n in &nodes[1..] {
        nodes[0].wait_state(&n.name, "active");
    }
    assert!(nodes[0]
        .cli(&["kv", "incr", "hits", "100"])
        .status
        .success());
    wait_until("everyone to see 100", || {
        nodes.iter().all(|n| value(n, "hits") == Some(100))
    });
    for i in 0..3 {
        lab.cut(i);
    }
    wait_until("the devices apart", || {
        nodes.iter().all(|n| {
            nodes
                .iter()
                .filter(|o| o.name != n.name)
                .all(|o| n.peer(&o.name).is_some_and(|p| p["state"] == "unreachable"))
        })
    });
    // Each device counts its own share, concurrently with the others.
    let shares = [7i64, -20, 300];
    std::thread::scope(|s| {
        for (n, by) in nodes.iter().zip(shares) {
            s.spawn(move || {
                for _ in 0..5 {
                    let out = n.cli(&["kv", "incr", "hits", &by.to_string()]);
                    assert!(out.status.success(), "{}", stderr(&out));
                }
            });
        }
    });
    // Apart, each sees only its own counts.
    assert_eq!(value(&nodes[1], "hits"), Some(100 - 20 * 5));
    for i in 0..3 {
        lab.heal(i);
    }
    let total = 100 + 5 * shares.iter().sum::<i64>();
    wait_until("the exact sum everywhere", || {
        nodes.iter().all(|n| value(n, "hits") == Some(total))
    });
    let j = nodes[2].json(&["kv", "get", "hits"]);
    assert_eq!(j["parts"][nodes[0].id.as_str()], 100 + 35, "{j}");
    assert_eq!(j["parts"][nodes[1].id.as_str()], -100, "{j}");
    assert_eq!(j["parts"][nodes[2].id.as_str()], 1500, "{j}");
}
