//! The egress check on hostile URLs: any string parsed as reqwest parses
//! it, with IP literals in every notation (decimal, octal, hex, short
//! forms, IPv6 with embedded IPv4). Whatever the default policy permits must
//! lie outside every special-purpose range of the IANA registries, listed
//! here independently of the code under test; rules parse or fail with a
//! message.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use wasmgrid_data::egress::{Egress, Rule};

/// IANA IPv4 and IPv6 special-purpose address blocks (and multicast).
const SPECIAL: &[&str] = &[
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32", "::/128", "::1/128",
    "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10", "ff00::/8",
];

fn special(ip: IpAddr) -> bool {
    if SPECIAL.iter().any(|n| n.parse::<IpNet>().expect("net").contains(&ip)) {
        return true;
    }
    // An IPv6 address that reaches an IPv4 host: mapped, NAT64, 6to4.
    if let IpAddr::V6(v6) = ip {
        let o = v6.octets();
        let tail = IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
        let mapped = o[..10].iter().all(|&b| b == 0) && o[10] == 0xff && o[11] == 0xff;
        let nat64 = o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0];
        if (mapped || nat64) && special(tail) {
            return true;
        }
        if o[0] == 0x20 && o[1] == 0x02 && special(IpAddr::V4(Ipv4Addr::new(o[2], o[3], o[4], o[5]))) {
            return true;
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = text.parse::<Rule>();
    for candidate in [text.to_string(), format!("http://{text}/"), format!("http://[{text}]/")] {
        let Ok(url) = url::Url::parse(&candidate) else { continue };
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => continue,
        };
        let addr = SocketAddr::new(ip, url.port_or_known_default().unwrap_or(80));
        if Egress::default().permits(None, addr) {
            assert!(!special(ip), "{candidate} reaches {ip}, which the default policy permits");
        }
    }
});
