//! Packet captures inside a lab's namespace: `tcpdump -w` on one interface, the file
//! read back as UDP datagrams (IPv4 over Ethernet). The capture stops on `Drop`.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::DEADLINE;

/// One UDP datagram seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

pub struct Capture {
    child: Child,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Capture {
    /// Starts `tcpdump` on `iface` in namespace `ns` with the filter `filter` (words of a
    /// pcap expression) and waits until it listens. `None` (with a printed reason) when
    /// tcpdump is not installed, or cannot run here: in a user namespace of an
    /// unprivileged user, tcpdump's switch to its own user (or `-Z root`) is refused.
    pub fn start(ns: &str, iface: &str, filter: &[&str]) -> Option<Capture> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("capture.pcap");
        let spawned = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-i", iface, "-nn", "-U"])
            // Stay root: the file is in this test's temp dir.
            .args(["-Z", "root", "-w"])
            .arg(&file)
            .args(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipping the capture: cannot run tcpdump: {e}");
                return None;
            }
        };
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut seen = String::new();
        loop {
            match rx.recv_timeout(DEADLINE) {
                Ok(line) if line.contains("listening on") => break,
                Ok(line) if line.contains("Couldn't change to") => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!("skipping the capture: tcpdump cannot run here: {line}");
                    return None;
                }
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    if seen.contains("not found")
                        || seen.contains("No such file")
                        || seen.contains("Couldn't change to")
                    {
                        eprintln!("skipping the capture: no tcpdump here: {seen}");
                        return None;
                    }
                    panic!("tcpdump did not start listening on {iface} in {ns}:\n{seen}");
                }
            }
        }
        Some(Capture {
            child,
            file,
            _dir: dir,
        })
    }

    /// The UDP datagrams captured so far.
    pub fn udp(&self) -> Vec<Datagram> {
        parse_pcap(&std::fs::read(&self.file).unwrap_or_default())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The IPv4 UDP datagrams of a pcap file with Ethernet frames (a record cut short at
/// the end, still being written, is left out).
pub fn parse_pcap(data: &[u8]) -> Vec<Datagram> {
    let mut out = Vec::new();
    if data.len() < 24 {
        return out;
    }
    let le = match data[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return out,
    };
    let u32_at = |b: &[u8], i: usize| {
        let w = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    // Link type 1: Ethernet.
    if u32_at(data, 20) != 1 {
        return out;
    }
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32_at(data, at + 8) as usize;
        let start = at + 16;
        if start + len > data.len() {
            break;
        }
        if let Some(d) = udp_of(&data[start..start + len]) {
            out.push(d);
        }
        at = start + len;
    }
    out
}

fn udp_of(frame: &[u8]) -> Option<Datagram> {
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let udp = ip.get(ihl..)?;
    if udp.len() < 8 {
        return None;
    }
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let payload = udp.get(8..udp_len.max(8))?.to_vec();
    Some(Datagram {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload,
    })
}
