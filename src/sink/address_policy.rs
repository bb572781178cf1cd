//! Which addresses brunnr may deliver to: the SSRF guard.
//!
//! Destinations are checked twice: a literal IP in a refused range is refused when the norn is
//! created, and every name is checked again after DNS, when the connection is made
//! ([`GuardedResolver`]), so a name that later resolves to `169.254.169.254` still gets nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The rule: public addresses only, unless private ones (or listed ranges) are allowed.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    pub allow_private: bool,
    pub allow_cidrs: Vec<IpNet>,
}

impl From<&crate::config::DeliveryConfig> for AddressPolicy {
    fn from(config: &crate::config::DeliveryConfig) -> AddressPolicy {
        AddressPolicy {
            allow_private: config.allow_private_destinations,
            allow_cidrs: config.allow_cidrs.clone(),
        }
    }
}

impl AddressPolicy {
    /// The refused address a URL's host names literally, if it does. Literal IPs skip DNS, so the
    /// resolver never sees them: they are checked here, at creation and again before sending.
    pub fn refused_literal_host(&self, url: &url::Url) -> Option<IpAddr> {
        let ip = match url.host()? {
            url::Host::Ipv4(ip) => IpAddr::V4(ip),
            url::Host::Ipv6(ip) => IpAddr::V6(ip),
            url::Host::Domain(_) => return None,
        };
        (!self.permits(ip)).then_some(ip)
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private
            || self.allow_cidrs.iter().any(|net| net.contains(&ip))
            || !is_refused(ip)
    }
}

/// Loopback, private, link-local (cloud metadata lives there), CGNAT, multicast, reserved and
/// unspecified addresses, and IPv6 forms that embed one of those IPv4 addresses.
pub fn is_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_refused_v4(v4),
        IpAddr::V6(v6) => is_refused_v6(v6),
    }
}

fn is_refused_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b)) // CGNAT, also Alibaba's metadata address
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
}

fn is_refused_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_refused_v4(v4);
    }
    let segments = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local (AWS metadata fd00:ec2::254 too)
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        // IPv4-compatible ::a.b.c.d
        || (segments[..6].iter().all(|&s| s == 0) && is_refused_v4(embedded_v4(segments[6], segments[7])))
        // NAT64 64:ff9b::a.b.c.d
        || (segments[0] == 0x64 && segments[1] == 0xff9b && is_refused_v4(embedded_v4(segments[6], segments[7])))
        // 6to4 2002:a.b.c.d::
        || (segments[0] == 0x2002 && is_refused_v4(embedded_v4(segments[1], segments[2])))
}

/// A DNS resolver for reqwest that drops refused addresses, failing when none is left.
pub struct GuardedResolver {
    pub policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| policy.permits(addr.ip()))
                .collect();
            if permitted.is_empty() {
                return Err(format!(
                    "{host} resolves only to addresses that destinations may not use ({})",
                    resolved
                        .iter()
                        .map(|addr| addr.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into());
            }
            let addrs: Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_internal_addresses() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.100.100.200",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "224.0.0.1",
        ] {
            assert!(
                is_refused(refused.parse().unwrap()),
                "{refused} should be refused"
            );
        }
        for allowed in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(
                !is_refused(allowed.parse().unwrap()),
                "{allowed} should be allowed"
            );
        }
    }

    #[test]
    fn policy_allows_listed_ranges() {
        let policy = AddressPolicy {
            allow_private: false,
            allow_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(policy.permits("10.9.9.9".parse().unwrap()));
        assert!(!policy.permits("192.168.0.1".parse().unwrap()));
        assert!(
            AddressPolicy {
                allow_private: true,
                allow_cidrs: vec![]
            }
            .permits("127.0.0.1".parse().unwrap())
        );
    }
}
