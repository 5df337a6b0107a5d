//! Where an IP address leads, for addresses a client makes the server reach (Web Push endpoints):
//! one rule over the IANA special-purpose address registries, not a list of forms.
//!
//! An address is public only if it is in no block of the IANA IPv4 or IPv6 Special-Purpose
//! Address Registry (RFC 6890 and its updates; the tables below, as of 2025), is not multicast,
//! and, for IPv6, is in the global unicast space 2000::/3 (everything else is reserved by the
//! IETF, RFC 4291). Blocks the registries call globally reachable (anycast services such as
//! AS112 or TURN) are refused too: no push service lives there. The two IPv6 forms that reach an
//! IPv4 host, IPv4-mapped (`::ffff:0:0/96`) and the NAT64 well-known prefix (`64:ff9b::/96`, the
//! addresses of a DNS64 network), are judged by the IPv4 address they carry; every other form
//! that embeds one (IPv4-compatible, IPv4-translated, local-use NAT64, 6to4, Teredo) lies in a
//! special or reserved block and is refused whatever it carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where an address leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// This host (127.0.0.0/8, ::1).
    Loopback,
    /// A special-purpose, multicast or reserved address: private networks, link-local, shared,
    /// documentation, benchmarking, protocol assignments, translation prefixes...
    Internal,
    /// A global unicast address in no special-purpose block.
    Public,
}

/// An address block: its first address and prefix length.
type Block<A> = (A, u8);

/// The IANA IPv4 Special-Purpose Address Registry, and multicast (224.0.0.0/4, its own
/// registry). Sub-blocks of a listed block (192.0.0.0/29, 192.0.0.8/32, 192.0.0.9/32, ...,
/// 255.255.255.255/32) are covered by it.
pub const IPV4_SPECIAL: &[Block<Ipv4Addr>] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network" (RFC 791)
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private-use (RFC 1918)
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // shared address space (RFC 6598)
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback (RFC 1122)
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link local (RFC 3927)
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private-use (RFC 1918)
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments (RFC 6890)
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation TEST-NET-1 (RFC 5737)
    (Ipv4Addr::new(192, 31, 196, 0), 24), // AS112-v4 (RFC 7535)
    (Ipv4Addr::new(192, 52, 193, 0), 24), // AMT (RFC 7450)
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // deprecated 6to4 relay anycast (RFC 7526)
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private-use (RFC 1918)
    (Ipv4Addr::new(192, 175, 48, 0), 24), // direct delegation AS112 (RFC 7534)
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking (RFC 2544)
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation TEST-NET-2 (RFC 5737)
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation TEST-NET-3 (RFC 5737)
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast (RFC 5771)
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, and limited broadcast (RFC 1112, RFC 919)
];

const fn v6(segments: [u16; 8]) -> Ipv6Addr {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Addr::new(a, b, c, d, e, f, g, h)
}

/// The IANA IPv6 Special-Purpose Address Registry, and multicast (ff00::/8). Sub-blocks of
/// 2001::/23 (Teredo 2001::/32, benchmarking 2001:2::/48, AMT, AS112, ORCHID, drone remote ID,
/// ...) are covered by it.
pub const IPV6_SPECIAL: &[Block<Ipv6Addr>] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 1]), 128),        // loopback (RFC 4291)
    (v6([0, 0, 0, 0, 0, 0, 0, 0]), 128),        // unspecified (RFC 4291)
    (v6([0, 0, 0, 0, 0, 0xffff, 0, 0]), 96),    // IPv4-mapped (RFC 4291)
    (v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]), 96), // IPv4-IPv6 translation (RFC 6052)
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]), 48), // local-use IPv4/IPv6 translation (RFC 8215)
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0]), 64),     // discard-only (RFC 6666)
    (v6([0x100, 0, 0, 1, 0, 0, 0, 0]), 64),     // dummy IPv6 prefix (RFC 9780)
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0]), 23),    // IETF protocol assignments (RFC 2928)
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]), 32), // documentation (RFC 3849)
    (v6([0x2002, 0, 0, 0, 0, 0, 0, 0]), 16),    // 6to4 (RFC 3056)
    (v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0]), 48), // direct delegation AS112 (RFC 7534)
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0]), 20),    // documentation (RFC 9637)
    (v6([0x5f00, 0, 0, 0, 0, 0, 0, 0]), 16),    // segment routing SIDs (RFC 9602)
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0]), 7),     // unique-local (RFC 4193)
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]), 10),    // link-local unicast (RFC 4291)
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8),     // multicast (RFC 4291)
];

/// The IPv6 global unicast space (RFC 4291): all else is special or reserved.
const IPV6_GLOBAL_UNICAST: Block<Ipv6Addr> = (v6([0x2000, 0, 0, 0, 0, 0, 0, 0]), 3);

/// Where `ip` leads (see the module's rule).
pub fn reach(ip: IpAddr) -> Reach {
    match ip {
        IpAddr::V4(v4) => reach_v4(v4),
        IpAddr::V6(v6) => {
            if v6 == Ipv6Addr::LOCALHOST {
                return Reach::Loopback;
            }
            if let Some(carried) = v4_reached_through(v6) {
                return reach_v4(carried);
            }
            let special = IPV6_SPECIAL.iter().any(|&block| in_block_v6(v6, block));
            if special || !in_block_v6(v6, IPV6_GLOBAL_UNICAST) {
                Reach::Internal
            } else {
                Reach::Public
            }
        }
    }
}

fn reach_v4(ip: Ipv4Addr) -> Reach {
    if ip.is_loopback() {
        Reach::Loopback
    } else if IPV4_SPECIAL.iter().any(|&block| in_block_v4(ip, block)) {
        Reach::Internal
    } else {
        Reach::Public
    }
}

/// The IPv4 host an IPv6 address reaches, for the two forms that reach one: IPv4-mapped and
/// the NAT64 well-known prefix.
fn v4_reached_through(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Some(mapped);
    }
    let nat64 = (v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]), 96);
    in_block_v6(ip, nat64).then(|| {
        let [.., a, b, c, d] = ip.octets();
        Ipv4Addr::new(a, b, c, d)
    })
}

fn in_block_v4(ip: Ipv4Addr, (first, len): Block<Ipv4Addr>) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(first) & mask
}

fn in_block_v6(ip: Ipv6Addr, (first, len): Block<Ipv6Addr>) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(first) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last address of a block.
    fn last_v4((first, len): Block<Ipv4Addr>) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(first) | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0))
    }

    fn last_v6((first, len): Block<Ipv6Addr>) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(first) | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0))
    }

    #[test]
    fn every_special_purpose_block_is_internal_from_its_first_address_to_its_last() {
        for &block in IPV4_SPECIAL {
            for ip in [block.0, last_v4(block)] {
                let expected = if ip.is_loopback() {
                    Reach::Loopback
                } else {
                    Reach::Internal
                };
                assert_eq!(reach(IpAddr::V4(ip)), expected, "{ip}");
                // The same address mapped into IPv6, or behind NAT64, leads to the same place.
                assert_eq!(
                    reach(IpAddr::V6(ip.to_ipv6_mapped())),
                    expected,
                    "{ip} mapped"
                );
                let [a, b, c, d] = ip.octets();
                let nat64 = v6([
                    0x64,
                    0xff9b,
                    0,
                    0,
                    0,
                    0,
                    u16::from_be_bytes([a, b]),
                    u16::from_be_bytes([c, d]),
                ]);
                assert_eq!(reach(IpAddr::V6(nat64)), expected, "{nat64}");
            }
        }
        for &block in IPV6_SPECIAL {
            for ip in [block.0, last_v6(block)] {
                assert_ne!(reach(IpAddr::V6(ip)), Reach::Public, "{ip}");
            }
        }
    }

    #[test]
    fn every_ipv6_form_of_an_ipv4_loopback_or_private_address_is_refused() {
        for form in [
            "::127.0.0.1",                          // IPv4-compatible (deprecated)
            "::ffff:127.0.0.1",                     // IPv4-mapped
            "::ffff:0:127.0.0.1",                   // IPv4-translated (SIIT)
            "64:ff9b::127.0.0.1",                   // NAT64 well-known prefix
            "64:ff9b:1::7f00:1",                    // local-use NAT64
            "2002:7f00:1::1",                       // 6to4
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo (server 65.54.227.120, client 127.0.0.1)
            "::10.0.0.1",
            "::ffff:0:10.0.0.1",
            "64:ff9b::169.254.169.254",
            "fec0::1", // site-local (deprecated, outside 2000::/3)
            "::",
            "::2",
        ] {
            let ip: IpAddr = form.parse().unwrap();
            assert_ne!(reach(ip), Reach::Public, "{form}");
        }
    }

    #[test]
    fn global_unicast_addresses_are_public() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "192.0.1.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "2001:200::1",
            "64:ff9b::808:808", // NAT64 of 8.8.8.8 (a DNS64 network)
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert_eq!(reach(ip), Reach::Public, "{public}");
        }
    }
}
