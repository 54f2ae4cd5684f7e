//! The egress policy: which addresses the grid connects to when it fetches a
//! URL on a tenant's behalf (a job's `http(s)://` input), and the bounded
//! fetch itself.
//!
//! Every hop is checked before a connection is made: the host is resolved,
//! each address is checked, and the connection goes to a checked address
//! (the client is pinned to it, so a second DNS answer cannot swap in
//! another). By default loopback, private, link-local (the cloud metadata
//! service at 169.254.169.254 among them), unique-local, unspecified,
//! multicast and reserved addresses are refused, and so are the grid's own
//! listeners; an operator widens or narrows that with allow and deny rules
//! (CIDRs, addresses, host names, `*.suffix` wildcards). A deny rule wins
//! over an allow rule. Redirects are followed by hand, at most
//! [`MAX_REDIRECTS`], each hop checked again.
//!
//! A refused address, a name that does not resolve and a connection that
//! fails all read the same, so the grid is no port scanner. A fetch is
//! streamed to a file, never held whole in memory, and stops at a size
//! limit, after an idle time without data and after a total time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::AsyncWriteExt;
use url::{Host, Url};

/// The most redirects one fetch follows.
pub const MAX_REDIRECTS: usize = 5;

/// One allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// A network (`10.0.0.0/8`) or one address (`10.1.2.3`, `::1`).
    Net(IpNet),
    /// A host name (`data.example.com`), or every name under a domain
    /// (`*.example.com`, which does not match `example.com` itself).
    Host(String),
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Rule, String> {
        let t = s.trim();
        let bare = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(t);
        if let Ok(net) = bare.parse::<IpNet>() {
            return Ok(Rule::Net(net.trunc()));
        }
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Rule::Net(IpNet::from(ip)));
        }
        let name = t.trim_end_matches('.').to_ascii_lowercase();
        let labels = name.strip_prefix("*.").unwrap_or(&name);
        let valid = !labels.is_empty()
            && labels.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !valid || t.contains('/') {
            return Err(format!(
                "`{s}` is not a CIDR, an address or a host name (10.0.0.0/8, 10.1.2.3, data.example.com, *.example.com)"
            ));
        }
        Ok(Rule::Host(name))
    }
}

impl Rule {
    fn matches(&self, name: Option<&str>, ip: IpAddr) -> bool {
        match self {
            Rule::Net(net) => net.contains(&ip) || embedded_v4(ip).is_some_and(|v4| net.contains(&IpAddr::V4(v4))),
            Rule::Host(pattern) => name.is_some_and(|n| host_matches(pattern, n)),
        }
    }

    fn matches_name(&self, name: &str) -> bool {
        matches!(self, Rule::Host(pattern) if host_matches(pattern, name))
    }
}

fn host_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(domain) => {
            name.len() > domain.len() + 1
                && name[name.len() - domain.len()..].eq_ignore_ascii_case(domain)
                && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
        }
        None => name.eq_ignore_ascii_case(pattern),
    }
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4
/// (`2002::/16`). Each of them reaches that IPv4 host.
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, _, _] if !v6.is_loopback() && !v6.is_unspecified() => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8)),
        _ => None,
    }
}

/// Whether an address is outside the public internet: loopback, private,
/// shared (CGNAT), link-local, unique-local, unspecified, multicast,
/// documentation, benchmarking and reserved ranges, and IPv6 forms that
/// embed one of them.
pub fn is_internal(ip: IpAddr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_internal(IpAddr::V4(v4));
    }
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || (first == 0x2001 && v6.segments()[1] == 0) // Teredo
                || (first == 0x0100 && v6.segments()[1..4] == [0, 0, 0]) // discard
                || v6.segments()[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible, ::, ::1
        }
    }
}

/// Limits on one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// The largest object, in bytes.
    pub max_bytes: u64,
    /// Longest wait for a connection, or for the next bytes of an answer.
    pub idle: Duration,
    /// Longest a whole fetch (redirects included) takes.
    pub total: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits { max_bytes: 10 << 30, idle: Duration::from_secs(30), total: Duration::from_secs(30 * 60) }
    }
}

/// Which addresses the grid fetches from, and how much.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    /// The grid's own listeners (an unspecified address stands for every
    /// address of this machine).
    own: Vec<SocketAddr>,
    /// Anything goes (`wasmgrid run`: the user's own machine and network).
    open: bool,
    /// Limits on each fetch.
    pub limits: FetchLimits,
}

/// Why a fetch failed. The text names the URL the tenant gave, never a
/// path on the node.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    /// Refused by the policy, not resolvable, or nothing answered: one text
    /// for all of them.
    #[error("{url}: not reachable from the grid (its egress policy refuses the address, or nothing answered)")]
    Unreachable {
        /// The URL.
        url: String,
    },
    /// Not a URL the grid fetches.
    #[error("{url}: {reason}")]
    Bad {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{url}: the server answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// Over the size limit.
    #[error("{url}: larger than the limit of {limit} bytes for one input")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// No data for the idle time, or the whole fetch took too long.
    #[error("{url}: no answer within {after:?}")]
    TimedOut {
        /// The URL.
        url: String,
        /// The time limit that ran out.
        after: Duration,
    },
    /// More redirects than [`MAX_REDIRECTS`].
    #[error("{url}: more than {MAX_REDIRECTS} redirects")]
    Redirects {
        /// The URL.
        url: String,
    },
    /// The transfer broke off.
    #[error("{url}: the transfer broke off")]
    BrokeOff {
        /// The URL.
        url: String,
    },
    /// The fetched bytes could not be stored on the node.
    #[error("{url}: the node could not store the fetched data")]
    Local {
        /// The URL.
        url: String,
    },
}

impl Egress {
    /// The default policy: public addresses only.
    pub fn new(allow: Vec<Rule>, deny: Vec<Rule>, limits: FetchLimits) -> Egress {
        Egress { allow, deny, own: Vec::new(), open: false, limits }
    }

    /// A policy that permits every address but the deny rules
    /// (`wasmgrid run`, where the fetch is the user's own).
    pub fn open() -> Egress {
        Egress { open: true, ..Egress::default() }
    }

    /// Also refuses the grid's own listeners.
    pub fn with_own(mut self, listeners: impl IntoIterator<Item = SocketAddr>) -> Egress {
        self.own.extend(listeners);
        self
    }

    /// Whether a name is refused before it is resolved.
    pub fn refuses_name(&self, name: &str) -> bool {
        self.deny.iter().any(|r| r.matches_name(name))
    }

    /// Whether a connection to `addr`, reached as host `name` (none for an
    /// IP literal), is permitted.
    pub fn permits(&self, name: Option<&str>, addr: SocketAddr) -> bool {
        let ip = addr.ip();
        if self.deny.iter().any(|r| r.matches(name, ip)) || self.is_own(addr) {
            return false;
        }
        self.open || self.allow.iter().any(|r| r.matches(name, ip)) || !is_internal(ip)
    }

    fn is_own(&self, addr: SocketAddr) -> bool {
        let ip = embedded_v4(addr.ip()).map_or(addr.ip(), IpAddr::V4);
        self.own.iter().any(|own| {
            own.port() == addr.port()
                && (own.ip() == ip
                    || (own.ip().is_unspecified() && (ip.is_loopback() || local_addresses().contains(&ip))))
        })
    }

    /// Checks a URL's scheme and host, resolves it and returns the
    /// addresses a connection may go to (none: refused).
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, FetchError> {
        let unreachable = || FetchError::Unreachable { url: url.to_string() };
        if !matches!(url.scheme(), "http" | "https") {
            let reason = format!("unsupported scheme `{}` (use http or https)", url.scheme());
            return Err(FetchError::Bad { url: url.to_string(), reason });
        }
        let port = url.port_or_known_default().ok_or_else(unreachable)?;
        let (name, candidates) = match url.host() {
            Some(Host::Ipv4(ip)) => (None, vec![SocketAddr::new(IpAddr::V4(ip), port)]),
            Some(Host::Ipv6(ip)) => (None, vec![SocketAddr::new(IpAddr::V6(ip), port)]),
            Some(Host::Domain(name)) => {
                if self.refuses_name(name) {
                    return Err(unreachable());
                }
                let found = tokio::time::timeout(self.limits.idle, tokio::net::lookup_host((name, port)))
                    .await
                    .map_err(|_| unreachable())?
                    .map_err(|_| unreachable())?;
                (Some(name), found.collect())
            }
            None => return Err(FetchError::Bad { url: url.to_string(), reason: "the URL names no host".into() }),
        };
        let permitted: Vec<SocketAddr> = candidates.into_iter().filter(|a| self.permits(name, *a)).collect();
        if permitted.is_empty() {
            return Err(unreachable());
        }
        Ok(permitted)
    }

    /// A client that connects to `url`'s checked addresses only.
    async fn client_for(&self, url: &Url) -> Result<reqwest::Client, FetchError> {
        let addrs = self.resolve(url).await?;
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.limits.idle)
            .read_timeout(self.limits.idle);
        if let Some(Host::Domain(name)) = url.host() {
            builder = builder.resolve_to_addrs(name, &addrs);
        }
        builder.build().map_err(|_| FetchError::Unreachable { url: url.to_string() })
    }

    /// Sends `method` to `url`, following redirects (each hop checked), and
    /// returns the final answer.
    async fn open_url(&self, url: &str, method: reqwest::Method) -> Result<reqwest::Response, FetchError> {
        let given = url.to_string();
        let mut url = Url::parse(url).map_err(|e| FetchError::Bad { url: given.clone(), reason: e.to_string() })?;
        for _ in 0..=MAX_REDIRECTS {
            let client = self.client_for(&url).await?;
            let response =
                client.request(method.clone(), url.clone()).send().await.map_err(|e| self.failed(&given, &e))?;
            let location = response.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok());
            match location {
                Some(next) if response.status().is_redirection() => {
                    url = url.join(next).map_err(|e| FetchError::Bad { url: given.clone(), reason: e.to_string() })?;
                }
                _ => return Ok(response),
            }
        }
        Err(FetchError::Redirects { url: given })
    }

    fn failed(&self, url: &str, e: &reqwest::Error) -> FetchError {
        let url = url.to_string();
        if e.is_timeout() {
            FetchError::TimedOut { url, after: self.limits.idle }
        } else if e.is_connect() || e.is_request() {
            FetchError::Unreachable { url }
        } else {
            FetchError::BrokeOff { url }
        }
    }

    /// `work`, unless it takes longer than a whole fetch may.
    async fn within_total<T>(
        &self,
        url: &str,
        work: impl Future<Output = Result<T, FetchError>>,
    ) -> Result<T, FetchError> {
        tokio::time::timeout(self.limits.total, work)
            .await
            .map_err(|_| FetchError::TimedOut { url: url.to_string(), after: self.limits.total })?
    }

    /// The size of the object at `url` (a HEAD request), if the server
    /// says.
    pub async fn size(&self, url: &str) -> Result<Option<u64>, FetchError> {
        let work = async {
            let response = self.open_url(url, reqwest::Method::HEAD).await?;
            if !response.status().is_success() {
                return Err(FetchError::Status { url: url.to_string(), status: response.status().as_u16() });
            }
            Ok(response.content_length().filter(|&n| n > 0))
        };
        self.within_total(url, work).await
    }

    /// Streams the object at `url` into `file`; returns its size.
    pub async fn fetch_to(&self, url: &str, file: &mut tokio::fs::File) -> Result<u64, FetchError> {
        let work = async {
            let mut response = self.open_url(url, reqwest::Method::GET).await?;
            if !response.status().is_success() {
                return Err(FetchError::Status { url: url.to_string(), status: response.status().as_u16() });
            }
            let limit = self.limits.max_bytes;
            let too_large = || FetchError::TooLarge { url: url.to_string(), limit };
            if response.content_length().is_some_and(|n| n > limit) {
                return Err(too_large());
            }
            let mut written = 0u64;
            while let Some(chunk) = response.chunk().await.map_err(|e| self.failed(url, &e))? {
                written += chunk.len() as u64;
                if written > limit {
                    return Err(too_large());
                }
                file.write_all(&chunk).await.map_err(|_| FetchError::Local { url: url.to_string() })?;
            }
            file.flush().await.map_err(|_| FetchError::Local { url: url.to_string() })?;
            Ok(written)
        };
        self.within_total(url, work).await
    }
}

/// This machine's interface addresses, read once.
#[allow(unsafe_code)]
fn local_addresses() -> &'static [IpAddr] {
    static ADDRESSES: std::sync::OnceLock<Vec<IpAddr>> = std::sync::OnceLock::new();
    ADDRESSES.get_or_init(|| {
        let mut found = Vec::new();
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `list` with a linked list that stays
        // valid until freeifaddrs; each `ifa_addr` is null or points to a
        // sockaddr of the family it names.
        unsafe {
            if libc::getifaddrs(&mut list) != 0 {
                return found;
            }
            let mut at = list;
            while !at.is_null() {
                let addr = (*at).ifa_addr;
                if !addr.is_null() {
                    match i32::from((*addr).sa_family) {
                        libc::AF_INET => {
                            let v4 = &*(addr as *const libc::sockaddr_in);
                            found.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))));
                        }
                        libc::AF_INET6 => {
                            let v6 = &*(addr as *const libc::sockaddr_in6);
                            found.push(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)));
                        }
                        _ => {}
                    }
                }
                at = (*at).ifa_next;
            }
            libc::freeifaddrs(list);
        }
        found
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host a URL reaches, as reqwest parses it.
    fn literal(url: &str) -> IpAddr {
        match Url::parse(url).expect("url").host().expect("host") {
            Host::Ipv4(ip) => IpAddr::V4(ip),
            Host::Ipv6(ip) => IpAddr::V6(ip),
            Host::Domain(d) => panic!("{url}: a name, {d}"),
        }
    }

    #[test]
    fn every_notation_of_an_internal_address_is_internal() {
        let internal = [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://017700000001/",
            "http://0/",
            "http://0.0.0.0/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[::1]/",
            "http://[::]/",
            "http://[0:0:0:0:0:0:0:1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:7f00:1::]/",
            "http://[2002:a9fe:a9fe::1]/",
            "http://[fc00::1]/",
            "http://[fd12:3456::1]/",
            "http://[fe80::1]/",
            "http://[ff02::1]/",
            "http://[fd00:ec2::254]/",
        ];
        for url in internal {
            assert!(is_internal(literal(url)), "{url} should be internal");
        }
        let public =
            ["http://93.184.215.14/", "http://8.8.8.8/", "http://[2606:4700::1111]/", "http://[::ffff:8.8.8.8]/"];
        for url in public {
            assert!(!is_internal(literal(url)), "{url} should be public");
        }
    }

    /// The IANA special-purpose blocks, written out independently of
    /// [`is_internal`] (the fuzz target `egress` checks the same property on
    /// arbitrary strings).
    fn special(ip: IpAddr) -> bool {
        const SPECIAL: &[&str] = &[
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "::/128",
            "::1/128",
            "100::/64",
            "2001:db8::/32",
            "fc00::/7",
            "fe80::/10",
            "ff00::/8",
        ];
        if SPECIAL.iter().any(|n| n.parse::<IpNet>().expect("net").contains(&ip)) {
            return true;
        }
        match ip {
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let tail = IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
                let mapped = o[..10] == [0; 10] && o[10..12] == [0xff, 0xff];
                let nat64 = o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0];
                ((mapped || nat64) && special(tail))
                    || (o[..2] == [0x20, 0x02] && special(IpAddr::V4(Ipv4Addr::new(o[2], o[3], o[4], o[5]))))
            }
            IpAddr::V4(_) => false,
        }
    }

    #[test]
    fn what_the_default_policy_permits_is_never_special_in_any_notation() {
        let mut state = 0x5eed_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let policy = Egress::default();
        let mut checked = 0;
        for _ in 0..20_000 {
            let r = next();
            // Bias towards the interesting ranges: a special first octet half the time.
            let first = if r & 1 == 0 {
                [0u8, 10, 100, 127, 169, 172, 192, 198, 203, 224, 240, 255][(r >> 8) as usize % 12]
            } else {
                (r >> 16) as u8
            };
            let v4 = Ipv4Addr::new(first, (r >> 24) as u8, (r >> 32) as u8, (r >> 40) as u8);
            let n = u32::from(v4);
            let [a, b, c, d] = v4.octets();
            let seg = |x: u32| format!("{:x}", x & 0xffff);
            let forms = [
                format!("http://{v4}/"),
                format!("http://{n}/"),
                format!("http://0x{n:x}/"),
                format!("http://0{a:o}.0{b:o}.0{c:o}.0{d:o}/"),
                format!("http://{a}.{}/", (u32::from(b) << 16) | (u32::from(c) << 8) | u32::from(d)),
                format!("http://[::ffff:{v4}]/"),
                format!("http://[64:ff9b::{}:{}]/", seg(n >> 16), seg(n)),
                format!("http://[2002:{}:{}::1]/", seg(n >> 16), seg(n)),
                format!("http://[{:x}::{:x}]/", (r >> 48) as u16, r as u16),
            ];
            for url in forms {
                let Ok(parsed) = Url::parse(&url) else { continue };
                let ip = match parsed.host() {
                    Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
                    Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
                    _ => continue,
                };
                checked += 1;
                if policy.permits(None, SocketAddr::new(ip, 80)) {
                    assert!(!special(ip), "{url} reaches {ip}, which the default policy permits");
                }
            }
        }
        assert!(checked > 150_000, "only {checked} URLs parsed");
    }

    #[test]
    fn rules_parse_and_match() {
        assert_eq!("10.0.0.0/8".parse::<Rule>(), Ok(Rule::Net("10.0.0.0/8".parse().expect("valid"))));
        assert_eq!("10.1.2.3".parse::<Rule>(), Ok(Rule::Net("10.1.2.3/32".parse().expect("valid"))));
        assert_eq!("[::1]".parse::<Rule>(), Ok(Rule::Net("::1/128".parse().expect("valid"))));
        assert_eq!("Data.Example.COM.".parse::<Rule>(), Ok(Rule::Host("data.example.com".into())));
        assert!("*.example.com".parse::<Rule>().is_ok());
        for bad in ["", "a b", "10.0.0.0/33", "http://x", "*.", "exa mple.com"] {
            assert!(bad.parse::<Rule>().is_err(), "`{bad}` should not parse");
        }
        let wild: Rule = "*.example.com".parse().expect("valid");
        let ip: IpAddr = "10.0.0.1".parse().expect("valid");
        assert!(wild.matches(Some("a.example.com"), ip));
        assert!(wild.matches(Some("a.b.EXAMPLE.com."), ip));
        assert!(!wild.matches(Some("example.com"), ip));
        assert!(!wild.matches(Some("badexample.com"), ip));
        assert!(!wild.matches(None, ip));
    }

    #[test]
    fn deny_wins_over_allow_and_own_listeners_are_refused() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("valid");
        let policy = Egress::new(
            vec!["10.0.0.0/8".parse().expect("valid"), "files.internal".parse().expect("valid")],
            vec!["10.9.0.0/16".parse().expect("valid"), "8.8.8.8".parse().expect("valid")],
            FetchLimits::default(),
        )
        .with_own([addr("0.0.0.0:7400"), addr("10.1.1.1:7401")]);
        assert!(policy.permits(None, addr("10.1.2.3:80")));
        assert!(!policy.permits(None, addr("10.9.1.1:80")), "deny wins");
        assert!(!policy.permits(None, addr("8.8.8.8:53")));
        assert!(!policy.permits(None, addr("[::ffff:8.8.8.8]:53")), "mapped forms are denied too");
        assert!(policy.permits(None, addr("1.1.1.1:443")));
        assert!(!policy.permits(None, addr("192.168.1.1:80")));
        assert!(policy.permits(Some("files.internal"), addr("192.168.1.1:80")), "allowed by name");
        assert!(!policy.permits(None, addr("10.1.1.1:7401")), "the grid's own gateway");
        assert!(policy.permits(None, addr("10.1.1.1:7402")));
        assert!(!policy.permits(None, addr("127.0.0.1:7400")), "the grid's own API on every address");
        assert!(Egress::open().permits(None, addr("127.0.0.1:8080")));
    }

    #[tokio::test]
    async fn refused_urls_read_the_same_and_never_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("valid");
        let port = listener.local_addr().expect("valid").port();
        listener.set_nonblocking(true).expect("valid");
        let policy = Egress::new(Vec::new(), Vec::new(), FetchLimits::default());
        for url in [
            format!("http://127.0.0.1:{port}/secret"),
            format!("http://localhost:{port}/secret"),
            format!("http://2130706433:{port}/secret"),
            format!("http://[::ffff:127.0.0.1]:{port}/secret"),
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "http://10.255.255.1/x".to_string(),
        ] {
            let got = policy.size(&url).await.expect_err(&url);
            assert!(matches!(got, FetchError::Unreachable { .. }), "{url}: {got}");
            let text = got.to_string();
            assert!(
                text.ends_with(
                    "not reachable from the grid (its egress policy refuses the address, or nothing answered)"
                ),
                "{text}"
            );
        }
        assert!(listener.accept().is_err(), "nothing connected to the refused listener");
        let bad = policy.size("file:///etc/passwd").await.expect_err("file");
        assert!(matches!(bad, FetchError::Bad { .. }), "{bad}");
    }
}
